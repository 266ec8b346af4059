# The operator image: `libvirt-operator run` with the libvirt client library and qemu-img.
# QEMU itself is not here: guests run on the host under its libvirtd, reached through the
# /run/libvirt socket that the Helm chart mounts (deploy/helm/libvirt-operator).
#
#   docker build -t REGISTRY/libvirt-operator:0.1.0 .
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t REGISTRY/libvirt-operator:0.1.0 .
#
# BASE_IMAGE is any Debian bookworm image: python:3.11-slim-bookworm (the default) brings its own Python
# in /usr/local; a base without Python (debian:bookworm-slim, or the one hack/image.sh bootstraps with
# mmdebstrap) gets Debian's python3 (3.11) from apt. Both stages use the same base, so the venv built in
# the first one finds the same interpreter at the same path in the second, and the libvirt-python built
# against bookworm's libvirt-dev runs against bookworm's libvirt0.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Debian's python3, python3-venv (ensurepip) and python3-dev (Python.h) only where the base lacks them.
RUN python=; python3 -c 'import ensurepip, os, sysconfig; assert os.path.exists(sysconfig.get_path("include") + "/Python.h")' 2>/dev/null \
        || python="python3 python3-venv python3-dev"; \
    apt-get update \
    && apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc $python \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /src
# The dependencies first, in a layer of their own (libvirt-python is compiled here, against libvirt-dev):
# a change of the operator's code alone does not rebuild them.
# pip trusts the CA bundle given as the optional build secret pip-ca, if any (a build behind a TLS proxy:
# `--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`; it never becomes part of a layer).
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        >/tmp/requirements.txt \
    && pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt
COPY README.md ./
# operator/libvirt_operator/api/crd.yaml is a symlink into deploy/crds/: the package gets the file itself.
COPY deploy/crds/ deploy/crds/
COPY operator/ operator/
# The operator itself; then pip and setuptools leave the venv (nothing needs them at run time).
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-cache-dir --disable-pip-version-check --no-deps . \
    && pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# libvirt0: the client library libvirt-python loads; qemu-utils: qemu-img, which creates VM disks;
# genisoimage: the cloud-init NoCloud seeds (ISO 9660, label cidata); libvirt-clients: virsh, for
# `libvirt-operator console` (kubectl exec into the pod of the VM's node); python3 only where the base has
# no Python (the venv's interpreter).
RUN python=; command -v python3 >/dev/null || python=python3; \
    apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 qemu-utils genisoimage libvirt-clients $python \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
RUN libvirt-operator --version
# Non-root by default. Talking to the host's libvirtd takes either root or a uid the host's libvirtd
# admits (its socket group's GID as a supplemental group, with polkit off); the Helm chart sets the
# pod's user and groups (podSecurityContext in values.yaml explains the choice).
RUN groupadd --gid 65532 libvirt-operator \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin libvirt-operator
USER 65532:65532
# The chart mounts the root filesystem read-only and /tmp as an emptyDir: no .pyc files, HOME in /tmp.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# 8080: /healthz and /readyz (--health-port); 9090: /metrics (--metrics-port).
EXPOSE 8080 9090
ENTRYPOINT ["libvirt-operator", "run"]
