# sessiongate as a sidecar or standalone container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sessiongate

USER 10001
# Listen on all interfaces inside the container (the gate on 4455, its Prometheus metrics on
# 9464: publish that one to your monitoring network only); everything else comes from a mounted
# file (SESSIONGATE_CONFIG=/etc/sessiongate/config.yaml) and/or SESSIONGATE_* variables.
ENV SESSIONGATE_LISTEN__HOST=0.0.0.0 \
    SESSIONGATE_METRICS__HOST=0.0.0.0
EXPOSE 4455 9464

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4455/health/alive', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["sessiongate"]
CMD ["serve"]
