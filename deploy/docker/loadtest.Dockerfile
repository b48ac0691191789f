# The load-test image: this project's locustfile and summary (loadtest/, tools/, compress/) with
# pinned dependencies and the frames to send, for the Locust master and workers in deploy/k8s/loadtest.
# Built by `make image-loadtest` from the context `python -m tools.container context --image loadtest` assembles.
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLCONFIGDIR=/tmp/matplotlib YOLO_OFFLINE=1
WORKDIR /app
COPY requirements-loadtest.txt /app/requirements-loadtest.txt
RUN python -m pip install --no-cache-dir --no-deps -r /app/requirements-loadtest.txt \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin locust
COPY compress /app/compress
COPY tools /app/tools
COPY loadtest /app/loadtest
COPY frames /frames
ENV PYTHONPATH=/app
USER locust
# Locust's master port (workers connect to it); nothing listens for HTTP.
EXPOSE 5557
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import os; os.kill(1, 0)"]
ENTRYPOINT []
CMD ["python", "-m", "loadtest.run", "--help"]
