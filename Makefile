# Set-up and the two everyday commands. Everything installs into .venv at the root.
#   make app   -> create the environment, install everything, serve the app on 127.0.0.1
#   make test  -> create the environment, install the test extras, run the whole suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8501
# torch is pinned: this exact version is a local CPU wheel; anything else pulls a CUDA build.
TORCH  := torch==2.13.0

.PHONY: app test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[all]"
	touch $@

install: $(VENV)/.installed

app: $(VENV)/.installed
	$(BIN)/streamlit run app/streamlit_app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
