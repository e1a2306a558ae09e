# Fresh machine: `make run` sets everything up and answers a sample question; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	touch $(STAMP)

run: setup
	$(BIN)/bertdex index runs/faq-en examples/faq_en.csv --text-field question --group-field group --replace
	$(BIN)/bertdex query runs/faq-en "I can't remember my password" -k 3
	$(BIN)/bertdex index runs/faq-ko examples/faq_ko.csv --text-field question --group-field group --replace
	$(BIN)/bertdex query runs/faq-ko "비밀번호가 생각이 안 나요" -k 3

# headless Chromium + chromedriver for tests/test_browser.py, and a Korean font for its screenshots
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver -a -d /usr/share/fonts/truetype/nanum || \
		(apt-get update && apt-get install -y chromium chromium-driver fonts-nanum)

# two workers, each test file on one of them (module fixtures such as test_scale's local Ray stay in one process)
test: setup browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf runs .pytest_cache
