# Entry points. Each target creates the virtual environment first if it is missing or stale.
VENV   := .venv
PYTHON := $(VENV)/bin/python
READY  := $(VENV)/.ready

# What the browser test of the web page, the nginx failover and TLS tests, the container tests and
# the Prometheus tests run (Debian packages).
SYSTEM_PACKAGES := chromium chromium-driver nginx podman runc debootstrap prometheus openssl

.PHONY: demo test lab notebooks lock system-packages clean-generated

demo: $(READY)  ## run the three notebooks on the embedded digits; print test accuracy
	$(VENV)/bin/imgcls run

# Two workers, each given whole test files (loadfile): a file's module fixtures (trained models,
# servers, a Ray cluster) are made once, and nbval runs a notebook's cells in order in one kernel.
test: $(READY) system-packages  ## unit tests and nbval notebook tests
	$(PYTHON) -m pytest -n 2 --dist loadfile

lab: $(READY)   ## JupyterLab on the notebooks (JupyterLab refuses root without --allow-root)
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The committed notebooks are executed: after changing one (or what it calls), re-execute them as
# nbval runs them, in a scratch project on the embedded digits, and commit the outputs.
NOTEBOOKS := Data_Exploration Data_Preprocessing Model_Training Experiments
notebooks: $(READY)  ## re-execute the committed notebooks in place
	scratch=$$(mktemp -d) && mkdir $$scratch/config && cp config/Hyperparameters.yaml $$scratch/config/ && \
	for name in $(NOTEBOOKS); do \
	  IMGCLS_CONFIG=$$scratch/config/Hyperparameters.yaml $(VENV)/bin/jupyter nbconvert --to notebook \
	    --execute --inplace --ExecutePreprocessor.kernel_name=imgcls \
	    --ExecutePreprocessor.timeout=1800 notebooks/$$name.ipynb || exit 1; \
	done; rm -rf $$scratch

# The whole resolved set of dependencies (every extra), pinned with hashes: a new release of
# anything cannot change what `make` installs until `make lock` is run and the lock committed.
$(READY): pyproject.toml requirements.lock
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet --require-hashes -r requirements.lock
	$(PYTHON) -m pip install --quiet --no-deps -e .
	$(PYTHON) -m ipykernel install --sys-prefix --name imgcls --display-name "Python (imgcls)"
	touch $(READY)

# After changing pyproject.toml's dependencies (or to take newer releases): re-resolve every
# dependency and extra for Python 3.10-3.13 with uv, and write environment.yml from the lock.
lock:  ## refresh requirements.lock and environment.yml from pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet "uv==0.13.*"
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --universal --generate-hashes \
	  --python-version 3.10 --constraint tools/lock-constraints.txt --quiet --custom-compile-command "make lock" -o requirements.lock
	$(PYTHON) tools/environment_yml.py

system-packages:  ## apt-get install $(SYSTEM_PACKAGES) when missing and root; else their tests skip
	@missing=; for tool in chromium chromedriver nginx podman runc debootstrap prometheus promtool openssl; do \
	  PATH="$$PATH:/usr/sbin" command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "note: $(SYSTEM_PACKAGES) not all installed and not root with apt-get: the browser, nginx, container and Prometheus tests will be skipped"; \
	  exit 0; fi; \
	echo "apt-get install $(SYSTEM_PACKAGES) (for the browser, nginx, container and Prometheus tests)"; \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) || \
	  echo "note: apt-get install failed: the browser, nginx, container and Prometheus tests will be skipped"

clean-generated: ## delete everything derived: processed data, scan caches, built-in sources, runs
	find data/Processed_Data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	for folder in data/Raw_Data/*/; do \
	  if [ -f "$$folder/.imgcls-source.json" ]; then rm -rf "$$folder"; fi; \
	done
	rm -f data/Raw_Data/.*.lock
	rm -rf runs/
