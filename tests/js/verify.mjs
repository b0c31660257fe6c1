// Verifies a sessiongate identity token the way a Node app would: jose's remote JWKS, fetched
// from the gate's jwks_path, nothing else. Prints one JSON line: {"ok": true, "payload": ...,
// "header": ...} or {"ok": false, "code": "<jose error code>", "message": "..."}.
// usage: node verify.mjs JWKS_URL ISSUER AUDIENCE TOKEN [TOKEN...]  (one line per token)
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, issuer, audience, ...tokens] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 0 });
for (const token of tokens) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      algorithms: ["ES256", "EdDSA", "RS256"],
    });
    console.log(JSON.stringify({ ok: true, payload, header: protectedHeader }));
  } catch (err) {
    console.log(JSON.stringify({ ok: false, code: err.code ?? err.name, message: err.message }));
  }
}
