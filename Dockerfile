# syntax=docker/dockerfile:1
# One image for every Herwa role:
#   herwa bot | herwa etl run | herwa operator | herwa migrate | herwa seed | …
# Build:  docker build -t herwa:0.1.0 .
# Two stages: `build` installs the pinned dependencies (requirements.lock, wheels only, no
# resolution) and the project's own wheel into a venv; `runtime` is the same base image with
# that venv and nothing else, running as an unprivileged user with a read-only-friendly layout.
# tests/image/test_dockerfile.py runs the build stage's RUN steps and the entrypoint in a clean
# venv, so keep every RUN step plain shell using the variables below.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG SETUPTOOLS_VERSION=84.2.1
ARG WHEEL_VERSION=0.48.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/herwa \
    BUILD_TOOLS=/opt/build-tools \
    WHEELS=/wheels
WORKDIR /src

# 1. Dependencies alone: this layer is reused until requirements.lock changes.
COPY requirements.lock ./
RUN python -m venv "$VENV" \
    && "$VENV/bin/pip" install --no-deps --only-binary=:all: -r requirements.lock

# 2. Herwa as a wheel. The development tools (simulator, embedded stack, demo) are neither in the build context
#    (.dockerignore) nor in the wheel (pyproject): the image carries the product only.
COPY pyproject.toml README.md ./
COPY herwa ./herwa
RUN python -m venv "$BUILD_TOOLS" \
    && "$BUILD_TOOLS/bin/pip" install "setuptools==$SETUPTOOLS_VERSION" "wheel==$WHEEL_VERSION" \
    && "$BUILD_TOOLS/bin/pip" wheel --no-deps --no-build-isolation --wheel-dir "$WHEELS" .
RUN "$VENV/bin/pip" install --no-deps "$WHEELS"/herwa-*.whl \
    && "$VENV/bin/pip" check \
    && "$VENV/bin/herwa" --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="herwa" \
      org.opencontainers.image.description="Kubernetes-native analytics for Discord communities" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 herwa \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin herwa
COPY --from=build /opt/herwa /opt/herwa
ENV PATH=/opt/herwa/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["herwa"]
CMD ["--help"]
