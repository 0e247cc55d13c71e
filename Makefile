# The course in two commands:  `make lab` (set up + open JupyterLab)  and  `make test` (set up + run every test).
# Setup is idempotent: the virtual environment is rebuilt only when a requirements file changes.
# With a wheelhouse/ folder (`make wheelhouse`, on a machine with network) setup installs from it, offline.

# The first of these that is Python 3.11, 3.12 or 3.13; `make PYTHON=/path/to/python3.12 ...` chooses.
SUPPORTED := 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'
ifndef PYTHON
PYTHON := $(firstword $(foreach p,python3 python3.13 python3.12 python3.11,$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c $(SUPPORTED) 2>/dev/null && command -v $(p))))
endif
VENV   := .venv
WHEELHOUSE ?= wheelhouse
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.course-installed
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/compression-course/kernel.json
KERNEL := compression-course
# Extra pytest arguments, e.g. `make test TEST_ARGS="-k minilm"`.
TEST_ARGS ?=

.PHONY: setup lab test test-pythons notebooks students portability bench wheelhouse site clean

setup: $(STAMP) $(KERNEL_SPEC) $(LAB_SETTINGS)
	@$(PY) -m course_lib.data

$(STAMP): requirements.txt requirements-data.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "the course needs Python 3.11, 3.12 or 3.13, and none was found: install one, or run \`make PYTHON=/path/to/python3.12 ...\`" >&2; exit 1; }
	@$(PYTHON) -c $(SUPPORTED) || { echo "the course needs Python 3.11, 3.12 or 3.13, not $(PYTHON) ($$($(PYTHON) --version 2>&1)): run \`make PYTHON=/path/to/python3.12 ...\`" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) course_lib/wheelhouse.py install --wheelhouse $(WHEELHOUSE)
	@touch $(STAMP)

# The course kernel, registered in .venv (again by `make setup` if it was removed).
$(KERNEL_SPEC): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (compression course)" >/dev/null

# JupyterLab opens quietly: no news feed, no update check, no pop-up asking about either.
$(LAB_SETTINGS): course_lib/jupyterlab_overrides.json $(STAMP)
	@mkdir -p $(dir $@) && cp course_lib/jupyterlab_overrides.json $@

# Jupyter refuses to run as root unless told to (containers, cloud shells): pass --allow-root only there.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(VENV)/bin/jupyter lab $(LAB_ARGS) notebooks/00_welcome.ipynb

test: setup
	$(PY) -m pytest $(TEST_ARGS)

# Installs the course into a new virtual environment for each other supported Python on this machine and runs the
# notebooks' imports there (about 5 GB of downloads per version: not part of `make test`).
test-pythons: setup
	COURSE_TEST_PYTHONS=1 $(PY) -m pytest -p no:cacheprovider tests/test_pythons.py

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

# The course as a static web site in site/, from the committed outputs (nothing is re-executed).
site: setup
	$(PY) -m course_lib.site

# Teachers: every package setup installs, into wheelhouse/, for a classroom without network (see docs/INSTRUCTOR.md).
wheelhouse:
	@test -n "$(PYTHON)" || { echo "the course needs Python 3.11, 3.12 or 3.13" >&2; exit 1; }
	$(PYTHON) course_lib/wheelhouse.py download --dest $(WHEELHOUSE)

clean:
	rm -rf $(VENV) course_lib.egg-info
