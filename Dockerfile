# The raytron image: the CLI, the gateway, the autoscaler, and Ray with raytron's trainers for KubeRay pods.
#   docker build -t REGISTRY/raytron:0.1.0 . && docker push REGISTRY/raytron:0.1.0
# Triton itself runs from NVIDIA's image (nvcr.io/nvidia/tritonserver), not this one.
# torch==2.13.0 (pinned in pyproject.toml) comes from PyPI with its CUDA libraries (several GB): right
# for GPU training; for a CPU-only image pass an index with CPU wheels through PIP_EXTRA_ARGS, e.g.
#   --build-arg PIP_EXTRA_ARGS="--extra-index-url <a CPU torch wheel index>"
FROM python:3.11-slim

ARG PIP_EXTRA_ARGS=""
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

# wget: KubeRay operators older than Ray's HTTP health endpoint probe Ray pods with `wget ... | grep success`.
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cluster cluster
COPY datasets datasets
COPY trainers trainers
COPY serving serving
# Not editable: the package lands in site-packages and /src goes away.
RUN pip install ${PIP_EXTRA_ARGS} . && rm -rf /src

# A fixed numeric non-root user: the manifests run this image as uid/gid 10001 with a read-only root
# filesystem and an emptyDir on /tmp ($HOME), and runAsNonRoot can only check a numeric USER.
RUN groupadd --gid 10001 raytron \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin raytron
USER 10001
WORKDIR /tmp

ENTRYPOINT ["raytron"]
CMD ["--help"]
