# Entry points. Each target creates the virtual environment first if it is missing or stale.
VENV   := .venv
PYTHON := $(VENV)/bin/python
READY  := $(VENV)/.ready

.PHONY: demo test lab clean-generated

demo: $(READY)  ## run the three notebooks on the embedded digits; print test accuracy
	$(VENV)/bin/imgcls run

test: $(READY)  ## unit tests and nbval notebook tests
	$(PYTHON) -m pytest

lab: $(READY)   ## JupyterLab on the notebooks (JupyterLab refuses root without --allow-root)
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

$(READY): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev,serving]"
	$(PYTHON) -m ipykernel install --sys-prefix --name imgcls --display-name "Python (imgcls)"
	touch $(READY)

clean-generated: ## delete everything derived: processed data, scan caches, built-in sources, runs
	find data/Processed_Data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	for folder in data/Raw_Data/*/; do \
	  if [ -f "$$folder/.imgcls-source.json" ]; then rm -rf "$$folder"; fi; \
	done
	rm -f data/Raw_Data/.*.lock
	rm -rf runs/
