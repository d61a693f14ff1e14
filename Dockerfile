# onnxprune as a container step:
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/work" onnxprune model.onnx --ratio 0.5
# HOME=/tmp keeps onnxruntime's caches out of the mounted workspace whatever uid runs the image.
# Build argument EXTRAS=torch adds the optional torch bridge.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /opt/onnxprune
COPY pyproject.toml README.md ./
COPY onnxprune ./onnxprune
RUN python -m pip install ".${EXTRAS:+[${EXTRAS}]}" \
 && useradd --create-home --uid 1000 onnxprune
USER onnxprune
WORKDIR /work
ENTRYPOINT ["onnxprune"]
CMD ["--help"]
