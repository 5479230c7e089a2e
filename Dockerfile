# syntax=docker/dockerfile:1
# minio-s3-mirror: `docker run -e ... minio-s3-mirror:latest` mirrors every configured pair once.
# Hardened, as the manifests run it and tests/image/test_image.py runs it too:
#   docker run --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
#     --user 12345:0 -e ... minio-s3-mirror:latest
#
# Reproducible: base images pinned by digest (the tag beside it says which; refresh both
# with `docker buildx imagetools inspect <tag>`), Python dependencies installed only from
# deploy/image/requirements.lock (hashed; `make lock` regenerates it), mc at MC_VERSION,
# which must equal deploy/versions.env's (a test holds them equal). The bases are build
# arguments only so that a machine without a registry can build this same file on
# stand-ins (tests/image); leave them at their defaults.
ARG GO_IMAGE=golang:1.24-bookworm@sha256:1a6d4452c65dea36aac2e2d606b01b4a029ec90cc1ae53890540ce6173ea77ac
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${GO_IMAGE} AS mc
ARG MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
ENV CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=auto
RUN go install -trimpath -ldflags="-s -w" "github.com/minio/mc@${MC_VERSION}"

# The application and its locked dependencies in one virtualenv; only that directory
# reaches the final image (no wheel or pip cache left in a lower layer).
FROM ${PYTHON_IMAGE} AS app
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/image/requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/minio-s3-mirror \
 && /opt/minio-s3-mirror/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY replicator ./replicator
COPY listener ./listener
# The build backend is the locked setuptools already in the virtualenv; it and pip are
# not needed to run, so they stay out of the image.
RUN /opt/minio-s3-mirror/bin/pip install --no-deps --no-build-isolation . \
 && /opt/minio-s3-mirror/bin/python -m pip uninstall --yes --quiet setuptools pip \
 && /opt/minio-s3-mirror/bin/minio-s3-mirror --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/minio-s3-mirror/bin:$PATH \
    HOME=/home/mirror
# Group 10001 exists, so `USER 10001:10001` has a named group; any other user id works
# too (nothing writes to HOME; mc's config lives in a private directory under /tmp).
RUN groupadd --system --gid 10001 mirror \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/mirror mirror
COPY --from=mc /go/bin/mc /usr/local/bin/mc
COPY --from=app /opt/minio-s3-mirror /opt/minio-s3-mirror
COPY deploy/image/healthcheck.py /opt/minio-s3-mirror/healthcheck.py
USER 10001:10001
WORKDIR /home/mirror
# The webhook listener (WEBHOOK_ADDRESS) and /metrics, /healthz, /readyz (METRICS_ADDRESS).
EXPOSE 8080 9100
# `listen` and `work` answer /healthz; the one-shot commands (reconcile, backfill, check)
# are healthy while they run: their exit code is their result.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/minio-s3-mirror/bin/python", "/opt/minio-s3-mirror/healthcheck.py"]
ENTRYPOINT ["minio-s3-mirror"]
CMD ["reconcile"]
