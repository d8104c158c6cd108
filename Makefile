# Entry points. Each target creates the virtual environment first if it is missing or stale.
VENV   := .venv
PYTHON := $(VENV)/bin/python
READY  := $(VENV)/.ready

.PHONY: demo test lab clean-generated

demo: $(READY)  ## run the three notebooks on the embedded digits; print test accuracy
	$(VENV)/bin/imgcls run

test: $(READY)  ## unit tests and nbval notebook tests
	$(PYTHON) -m pytest

lab: $(READY)   ## JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks/

$(READY): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	$(PYTHON) -m ipykernel install --sys-prefix --name imgcls --display-name "Python (imgcls)"
	touch $(READY)

clean-generated: ## delete derived data and run outputs (never Raw_Data inputs or models)
	rm -rf data/Processed_Data/*/ runs/
