# The worker image. RocksDB comes with the rocksdict wheel; nothing to compile.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
COPY web ./web
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system --home /srv otp && mkdir -p /data && chown otp /data
USER otp
ENV DATA_DIR=/data WEB_HOST=0.0.0.0 WEB_PORT=6066
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/health')"
CMD ["python", "-m", "app", "worker"]
