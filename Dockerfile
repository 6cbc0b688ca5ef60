# The Async-Load Bridge image: `alb serve` (the bridge) and `alb predictor` (the Faust
# worker) from one build. Linted by hadolint in CI (tests/infra/test_deploy.py).
#   docker build -t async-load-bridge .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# The pinned dependency closure first (a layer that changes only with constraints.txt).
COPY constraints.txt pyproject.toml README.md ./
COPY alb ./alb
COPY bridge ./bridge
COPY common ./common
COPY ingest ./ingest
COPY predictor ./predictor
COPY replay ./replay
COPY ollamasim ./ollamasim
RUN python -m venv /opt/alb \
    && /opt/alb/bin/pip install --no-cache-dir -c constraints.txt .
# The event schemas, where ingest.contracts looks for them (beside the packages).
COPY schemas /opt/alb/lib/python3.11/site-packages/schemas

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="async-load-bridge" \
      org.opencontainers.image.description="A production control plane for Ollama" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/alb /opt/alb
RUN useradd --system --uid 10001 --home-dir /var/lib/alb --create-home alb
USER 10001
WORKDIR /var/lib/alb
ENV PATH=/opt/alb/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_STATE_HOME=/var/lib/alb/state \
    ALB_HOST=0.0.0.0 \
    ALB_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# Off loopback the bridge needs ALB_AUTH=keys (or ALB_ALLOW_OPEN=true): it says so and
# exits otherwise.
CMD ["alb", "serve"]
