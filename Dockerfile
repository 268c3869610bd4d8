# Training image: runs any recipe with `mlops run` (and the Prefect flows of `mlops.flows` on a worker).
# The serving image is not built from here: `mlops deploy RECIPE` renders one build context per model version
# (<out>/image/: a Dockerfile on a slim base, the model bundle, the mlops package and pinned serving requirements,
# no torch), so each image holds exactly the model it serves and is tagged with its version.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 mlops
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlops ./mlops
# Install torch first, pinned; point PIP_INDEX_URL at a CPU-only index to keep the image small.
ARG PIP_INDEX_URL
RUN pip install torch==2.14.1 torchvision==0.29.1 && pip install ".[train]"
COPY recipes ./recipes
COPY examples ./examples
USER mlops
ENV MLOPS_HOME=/home/mlops/.mlops
ENTRYPOINT ["mlops"]
CMD ["run", "recipes/quickstart.yaml"]
