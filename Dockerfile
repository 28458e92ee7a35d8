# syntax=docker/dockerfile:1
# audit-forwarder container image.
#
#   docker build -t audit-forwarder:1.0.0 .
#   docker run --rm -v "$PWD/config.yaml:/etc/audit-forwarder/config.yaml:ro" \
#     -v audit-buffer:/var/lib/audit-forwarder -p 8686:8686 -p 9464:9464 audit-forwarder:1.0.0
#
# The builder stage turns the source into a wheel; the final stage installs only
# that wheel and its dependencies (prebuilt wheels from PyPI: no compiler, no pip
# cache, no source tree). The Helm chart in charts/audit-forwarder runs this image.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore limits the context to what the wheel is built from.
COPY pyproject.toml README.md LICENSE ./
COPY forwarder ./forwarder
RUN pip wheel . --no-deps --wheel-dir /wheels

FROM ${PYTHON_IMAGE}
# Keep VERSION equal to the package version (tests/deploy/test_dockerfile.py checks it).
ARG VERSION=1.0.0
# Pass the repository URL at build time: --build-arg SOURCE_URL=https://...
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="audit-forwarder" \
      org.opencontainers.image.description="Durable audit-event forwarder: local ingest, SQLite write-ahead buffer, webhook delivery with retries and Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

# No AUDIT_FORWARDER_* defaults here: environment variables override the
# config file, and an image default would silently win over a user's
# buffer.path. The WORKDIR below puts the default ./data/buffer.db on the volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it and fsGroup
# can match it; the buffer and socket directories are the only writable paths.
RUN groupadd --system --gid 10001 audit-forwarder \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin audit-forwarder \
 && mkdir -p /etc/audit-forwarder /var/lib/audit-forwarder /var/run/audit-forwarder \
 && chown 10001:10001 /var/lib/audit-forwarder /var/run/audit-forwarder

# The wheel is bind-mounted from the builder, so it never lands in a layer.
# Its dependencies are pinned by the ranges in pyproject.toml.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl

USER 10001:10001
WORKDIR /var/lib/audit-forwarder
VOLUME ["/var/lib/audit-forwarder"]
# 8686: ingest (POST /v1/events); 9464: /metrics, /healthz, /readyz.
EXPOSE 8686 9464
# SIGTERM starts the graceful drain: ingest stops, in-flight deliveries get
# shutdownGraceSeconds, the buffer is closed cleanly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["audit-forwarder"]
CMD ["run", "--config", "/etc/audit-forwarder/config.yaml"]
