# moesched service image: slim Python (pinned), non-root, health-checked on the configured port.
#   docker build -t moesched .
#   docker run -p 8000:8000 -v "$PWD/../shared/traces:/traces:ro" moesched
# The real routing traces are not part of the repository: mount them at /traces (the image sets
# MOESCHED_TRACES_DIR=/traces) for `bench` and `replay`; without them those commands say so.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MOESCHED_HOST=0.0.0.0 \
    MOESCHED_PORT=8000 \
    MOESCHED_DB_PATH=/data/moesched.db \
    MOESCHED_TRACES_DIR=/traces

RUN useradd --create-home --uid 10001 moesched && mkdir -p /data /traces && chown moesched /data
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY hwmodel ./hwmodel
COPY solvers ./solvers
COPY service ./service
COPY bench ./bench
RUN pip install -c constraints.txt .

USER moesched
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, sys, urllib.request; port = os.environ.get('MOESCHED_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"
CMD ["moesched", "serve"]
