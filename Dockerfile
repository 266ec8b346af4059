# The operator image: `libvirt-operator run` with the libvirt client library and qemu-img.
# QEMU itself is not here: guests run on the host under its libvirtd, reached through the
# /run/libvirt socket that the Helm chart mounts (deploy/helm/libvirt-operator).
#
#   docker build -t REGISTRY/libvirt-operator:0.1.0 .
#
# Both stages use the same Debian release, so the libvirt-python built against bookworm's libvirt-dev
# runs against bookworm's libvirt0.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
# operator/libvirt_operator/api/crd.yaml is a symlink into deploy/crds/: the wheel gets the file itself.
COPY deploy/crds/ deploy/crds/
COPY operator/ operator/
# Wheels of the operator and of every dependency (libvirt-python is compiled here, against libvirt-dev).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# libvirt0: the client library libvirt-python loads; qemu-utils: qemu-img, which creates VM disks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 qemu-utils \
    && rm -rf /var/lib/apt/lists/*
# (BuildKit bind mount: the wheels never become a layer of the final image)
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links /wheels libvirt-operator \
    && libvirt-operator --version
# Non-root by default. Talking to the host's libvirtd takes either root or a uid the host's libvirtd
# admits (its socket group's GID as a supplemental group, with polkit off); the Helm chart sets the
# pod's user and groups (podSecurityContext in values.yaml explains the choice).
RUN groupadd --gid 65532 operator \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin operator
USER 65532:65532
# The chart mounts the root filesystem read-only and /tmp as an emptyDir: no .pyc files, HOME in /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# 8080: /healthz and /readyz (--health-port); 9090: /metrics (--metrics-port).
EXPOSE 8080 9090
ENTRYPOINT ["libvirt-operator", "run"]
