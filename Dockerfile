# Training image: runs any recipe with `mlops run`. (The serving image, with no torch in it, is
# rendered per model by `mlops deploy`.)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 mlops
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mlops ./mlops
# Install torch first, pinned; point PIP_INDEX_URL at a CPU-only index to keep the image small.
ARG PIP_INDEX_URL
RUN pip install torch==2.13.0 && pip install ".[train]"
COPY configs ./configs
COPY recipes ./recipes
COPY examples ./examples
USER mlops
ENV MLOPS_HOME=/home/mlops/.mlops
ENTRYPOINT ["mlops"]
CMD ["run", "recipes/quickstart.yaml"]
