# syntax=docker/dockerfile:1
# minio-s3-mirror: `docker run -e ... minio-s3-mirror:latest` mirrors every configured pair once.
# The mc version must equal MC_VERSION in deploy/versions.env (a test holds them equal).

FROM golang:1.24-bookworm AS mc
ARG MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
ENV CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=auto
RUN go install "github.com/minio/mc@${MC_VERSION}"

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY replicator ./replicator
COPY listener ./listener
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/mirror
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mirror mirror
COPY --from=mc /go/bin/mc /usr/local/bin/mc
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /home/mirror
ENTRYPOINT ["minio-s3-mirror"]
CMD ["reconcile"]
