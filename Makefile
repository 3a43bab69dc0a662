# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
PORT   ?= 8501
ADDRESS ?= localhost

.PHONY: run test test-fast demo clean

# (Re)create the venv when it is missing or its interpreter no longer runs, then install.
$(STAMP): pyproject.toml constraints.txt
	@if ! $(PY) -c "import sys" >/dev/null 2>&1; then rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[app,test]"
	@touch $(STAMP)

run: $(STAMP)
	@echo "mudsc studio: http://$(ADDRESS):$(PORT)"
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/mudsc zoo demo

clean:
	rm -rf $(VENV) .pytest_cache
