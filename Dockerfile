# Loratlas as a Hugging Face Space (sdk: docker): user 1000, HOME=/home/user, port 7860.
# CPU (the default) runs the bundled starter pack:
#   docker build -t loratlas . && docker run -p 7860:7860 loratlas
# GPU (CUDA, fp16, xformers): a CUDA build of torch and the `gpu` extra:
#   docker build -t loratlas-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     --build-arg EXTRAS=gpu . && docker run --gpus all -p 7860:7860 loratlas-gpu
# The engine picks CUDA with fp16 when a GPU is present, else the CPU with fp32
# (fusion/base.py: pick_device), and uses xformers only on CUDA when it is installed.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False

# Spaces run the container as user 1000 with a writable home.
RUN useradd --create-home --uid 1000 user
USER 1000
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    LORATLAS_HOME=/home/user/.cache/loratlas
WORKDIR $HOME/app

# 1. torch first, from the chosen index (CPU wheels by default: no CUDA libraries).
RUN pip install --user --index-url "$TORCH_INDEX" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2. the other dependencies, read from pyproject.toml (a layer that survives code edits).
COPY --chown=user pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --user -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3. the app and its starter pack (styles/data), then the package itself (no dependencies left).
COPY --chown=user . .
RUN pip install --user --no-deps -e . \
    && if [ -n "$EXTRAS" ]; then \
        pip install --user --extra-index-url "$TORCH_INDEX" -e ".[$EXTRAS]" \
            "torch==${TORCH_VERSION}"; \
    fi

EXPOSE 7860
# Settings (see README "Settings"): LORATLAS_BASE_MODEL, LORATLAS_BASE_CONFIG,
# LORATLAS_LIBRARY (e.g. /data/library on a Space with persistent storage), LORATLAS_DEVICE.
CMD ["loratlas", "serve"]
