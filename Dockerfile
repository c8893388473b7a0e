# syntax=docker/dockerfile:1
# trigger-bridge: multi-stage, the final image holds a virtualenv and no build tools.
# Install steps are the tests' own (scripts/test): `pip install .` into a venv.
#   docker build -t trigger-bridge .
#   docker run --rm -p 8000:8000 trigger-bridge demo

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY connectors ./connectors
# The tracing extra (OpenTelemetry SDK, OTLP/HTTP exporter) is in: spans are turned on by
# OTEL_EXPORTER_OTLP_ENDPOINT alone (docs/operations.md, Tracing).
# The Kafka codecs (snappy, lz4, zstd through cramjam) are dependencies; the build fails
# if any of them cannot be read, rather than an image that stalls on compressed records.
RUN /opt/venv/bin/python -m pip install --upgrade pip \
    && /opt/venv/bin/python -m pip install '.[speedups,tracing]' \
    && /opt/venv/bin/trigger-bridge --version \
    && /opt/venv/bin/python -c "from aiokafka import codec; \
assert codec.has_gzip() and codec.has_snappy() and codec.has_lz4() and codec.has_zstd()"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="trigger-bridge" \
      org.opencontainers.image.description="Kafka, RabbitMQ and cron triggers for functions on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_ADMIN_PORT=8000 \
    BRIDGE_LOG_FORMAT=json
WORKDIR /tmp
# Numeric, so runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Exec form: the bridge is PID 1 and receives SIGTERM itself (drain, settle, exit 0).
ENTRYPOINT ["trigger-bridge"]
CMD ["run"]
