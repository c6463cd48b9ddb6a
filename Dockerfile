# moesched service image: slim Python, non-root, health-checked.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MOESCHED_HOST=0.0.0.0 \
    MOESCHED_PORT=8000 \
    MOESCHED_DB_PATH=/data/moesched.db

RUN useradd --create-home --uid 10001 moesched && mkdir -p /data && chown moesched /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hwmodel ./hwmodel
COPY solvers ./solvers
COPY service ./service
COPY bench ./bench
RUN pip install .

USER moesched
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["moesched", "serve"]
