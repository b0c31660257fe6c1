"""sessiongate: Ory session authentication in front of web apps that have none."""

__version__ = "0.1.0"
