# grus.backup — every entry point installs what it needs first (see README.md).
#
#   make demo          three local containers, deploy, sync + backup, restore check, tear down
#   make test          every gate: lint, sanity, build, unit, integration, molecule
#   make lint | sanity | unit | integration | molecule | build | ee | bench | clean
#   make molecule SCENARIO=full      one Molecule scenario (MOLECULE_LANES=1: one at a time)
#   make unit PYTEST_ARGS='-k prune' one selection of tests

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
BUILD := $(ROOT)/.build
COLLECTIONS := $(BUILD)/collections
SANITY_TREE := $(BUILD)/sanity/ansible_collections/grus/backup
TESTBED := $(ROOT)/tests/testbed/testbed.sh
PYTHON ?= python3
PYTEST_ARGS ?=
SCENARIO ?=
SCENARIOS := $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard $(ROOT)/molecule/*/molecule.yml))))
# The longest first, so that the lanes of `make molecule` end together.
# `demo` is the README's `make demo`, run as one of them.
SCENARIOS_ORDERED := $(filter full,$(SCENARIOS)) $(filter full_bookworm,$(SCENARIOS)) demo \
                     $(filter incident,$(SCENARIOS)) $(filter-out full full_bookworm incident,$(SCENARIOS))

export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PYTHONPATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg

# pytest exits 5 when it collected nothing: that is never a pass here.
# A PYTEST_ARGS that names tests (a path under tests/) runs those alone, not the whole suite beside them.
suite = $(if $(findstring tests/,$(PYTEST_ARGS)),,$(1))
define run_pytest
	rc=0; $(BIN)/pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "FAILED: pytest collected no tests in $(strip $(1) $(PYTEST_ARGS))" >&2; exit 1; fi; exit $$rc
endef

.PHONY: help deps host-deps venv link test lint sanity unit integration molecule demo demo-up demo-down \
        build tarball ee changelog bench clean distclean

help:
	@sed -n '2,8p' $(ROOT)/Makefile | sed 's/^# \{0,1\}//'

## ---- set-up ------------------------------------------------------------------------

deps: host-deps venv link

host-deps:
	@$(ROOT)/tests/testbed/host-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: $(ROOT)/requirements/test.txt $(ROOT)/requirements/test.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	    -r $(ROOT)/requirements/test.txt -c $(ROOT)/requirements/test.lock
	@touch $@

# The collection must be found as ansible_collections/grus/backup: a link to this checkout.
link:
	@mkdir -p $(COLLECTIONS)/ansible_collections/grus
	@ln -sfn ../../../.. $(COLLECTIONS)/ansible_collections/grus/backup

## ---- gates -------------------------------------------------------------------------

GATES := lint sanity build unit integration molecule

# Every gate runs even when an earlier one failed, so one CI run shows all that is wrong.
test: deps
	@start=$$(date +%s); passed=0; failed=0; failures=""; \
	for gate in $(GATES); do \
	  t0=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$gate; then passed=$$((passed + 1)); \
	     echo "make test: gate $$gate passed in $$(( $$(date +%s) - t0 )) s"; \
	  else failed=$$((failed + 1)); failures="$$failures $$gate"; \
	     echo "make test: gate $$gate FAILED after $$(( $$(date +%s) - t0 )) s"; fi; \
	done; \
	echo "make test: $$(( $$(date +%s) - start )) s in all; failed gates:$${failures:- none}"; \
	echo "gates: $$passed passed, $$failed failed"; \
	[ $$failed -eq 0 ]

# The docs lint reads the installed tarball: what users get, and no .venv for antsibull-docs to copy.
lint: tarball
	$(BIN)/ruff check $(ROOT)
	$(BIN)/ruff format --check $(ROOT)/plugins $(ROOT)/tests $(ROOT)/bench
	$(BIN)/yamllint --strict $(ROOT)
	cd $(ROOT) && $(BIN)/ansible-lint --strict
	cd $(ROOT) && $(BIN)/antsibull-changelog lint
	cd $(BUILD)/installed/ansible_collections/grus/backup && \
	  $(BIN)/antsibull-docs lint-collection-docs --plugin-docs --skip-rstcheck .

# ansible-test wants the collection in an ansible_collections/grus/backup tree of its own
# (outside this git checkout, which would hide .build/ from it) and a pip bootstrap that
# works offline (tests/testbed/get_pip_standin.py; see ../shared/TESTBED.md).
sanity: deps
	@mkdir -p $(SANITY_TREE) $(HOME)/.ansible/test/cache
	@pipver=$$($(BIN)/python -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; \
	    import types; print(g(types.SimpleNamespace(version="3"))["pip"])'); \
	cp $(ROOT)/tests/testbed/get_pip_standin.py $(HOME)/.ansible/test/cache/get_pip_$${pipver//./_}.py
	@rsync -a --delete --exclude /.git --exclude /.build --exclude /.venv --exclude '__pycache__' \
	    --exclude /.pytest_cache --exclude /.ruff_cache --exclude /.ansible $(ROOT)/ $(SANITY_TREE)/
	@cd $(SANITY_TREE) && { [ -d .git ] || git init -q .; }
	cd $(SANITY_TREE) && $(BIN)/ansible-test sanity --local --python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') --color no

# The alert rules' own tests (promtool, from Debian's prometheus) run first; tests/unit checks them again
# with the dashboard against the metrics the jobs emit.
unit: deps
	cd $(ROOT)/extensions/prometheus && promtool check rules grus_backup.rules.yml && \
	  promtool test rules grus_backup.rules.test.yml grus_backup.rules.long.test.yml
	@$(call run_pytest,$(call suite,$(ROOT)/tests/unit))

# Each test makes its own repositories, temp dirs and sshd (one per worker): they run on every core.
INTEGRATION_WORKERS ?= $(shell nproc)

integration: deps
	@$(call run_pytest,-n $(INTEGRATION_WORKERS) $(call suite,$(ROOT)/tests/integration))

# Each scenario names its Debian release in molecule.yml (image grus-backup-<suite>); `full` and
# `full_bookworm` deploy from the tarball `make tarball` installs (.build/installed), as a user would.
# MOLECULE_LANES scenarios run at once (tests/testbed/molecule.sh); the longest start first.
MOLECULE_LANES ?= 2

molecule: deps tarball
	@eval "$$($(TESTBED) engine)"; cd $(ROOT); \
	MOLECULE_LANES=$(MOLECULE_LANES) $(ROOT)/tests/testbed/molecule.sh $(if $(SCENARIO),$(SCENARIO),$(SCENARIOS_ORDERED))

## ---- demo --------------------------------------------------------------------------

# The embedded default: start afresh, deploy, prove, tear down (KEEP=1 leaves the hosts running).
demo: deps
	@eval "$$($(TESTBED) engine)"; \
	trap '[ -n "$${KEEP:-}" ] || $(TESTBED) demo-down' EXIT; \
	$(TESTBED) demo-down; $(TESTBED) demo-up; \
	cd $(ROOT) && $(BIN)/ansible-playbook -i inventories/demo site.yml && \
	$(BIN)/ansible-playbook -i inventories/demo playbooks/drill.yml

demo-up: deps
	@eval "$$($(TESTBED) engine)"; $(TESTBED) demo-up

demo-down:
	@$(TESTBED) demo-down

## ---- packaging, docs, benchmarks -------------------------------------------------

# The tarball a user installs, installed as a user installs it (Molecule's `full` deploys from it).
tarball: deps
	@rm -rf $(BUILD)/dist $(BUILD)/installed && mkdir -p $(BUILD)/dist
	cd $(ROOT) && $(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist
	$(BIN)/ansible-galaxy collection install --offline --force -p $(BUILD)/installed $(BUILD)/dist/grus-backup-*.tar.gz
	test -f $(BUILD)/installed/ansible_collections/grus/backup/MANIFEST.json

build: tarball
	@# The alert rules and the dashboard ship in the tarball (docs/monitoring.md).
	test -f $(BUILD)/installed/ansible_collections/grus/backup/extensions/prometheus/grus_backup.rules.yml
	test -f $(BUILD)/installed/ansible_collections/grus/backup/extensions/grafana/grus_backup.dashboard.json
	cd /tmp && for m in borg_repo borg_archive nfs_sync; do \
	  env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH=$(BUILD)/installed $(BIN)/ansible-doc grus.backup.$$m >/dev/null; done
	cd /tmp && for spec in $(ROOT)/roles/*/meta/argument_specs.yml; do \
	  role=$$(basename $$(dirname $$(dirname $$spec))); \
	  env -u ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH=$(BUILD)/installed $(BIN)/ansible-doc -t role grus.backup.$$role >/dev/null; done
	@echo "build: $$(ls $(BUILD)/dist) installs; its modules and roles render with ansible-doc"
	@$(MAKE) --no-print-directory ee

# The execution environment for AWX / AAP (execution-environment.yml): what the installed collection
# declares (meta/execution-environment.yml), and the build context ansible-builder renders from the
# tarball. Building the image itself needs an image registry, which these machines cannot reach.
ee: deps
	@rm -rf $(BUILD)/ee && mkdir -p $(BUILD)/ee
	cp $(BUILD)/dist/grus-backup-*.tar.gz $(BUILD)/ee/grus-backup.tar.gz
	$(BIN)/ansible-builder introspect --sanitize $(BUILD)/installed > $(BUILD)/ee/introspect.yml
	grep -q "openssh-client \[platform:dpkg\]  # from collection grus.backup" $(BUILD)/ee/introspect.yml
	cd $(ROOT) && $(BIN)/ansible-builder create -f execution-environment.yml -c $(BUILD)/ee/context >/dev/null
	cmp $(BUILD)/ee/grus-backup.tar.gz $(BUILD)/ee/context/_build/collections/grus-backup.tar.gz
	@# The image's galaxy stage installs from /build (the context's _build): do the same outside a container.
	sed 's|/build/|$(BUILD)/ee/context/_build/|' $(BUILD)/ee/context/_build/requirements.yml > $(BUILD)/ee/requirements.yml
	$(BIN)/ansible-galaxy collection install --offline --force -r $(BUILD)/ee/requirements.yml -p $(BUILD)/ee/collections >/dev/null
	test -f $(BUILD)/ee/collections/ansible_collections/grus/backup/meta/execution-environment.yml
	@echo "ee: the build context installs grus.backup from the tested tarball (building the image needs a registry)"

changelog: deps
	cd $(ROOT) && $(BIN)/antsibull-changelog release

bench: deps
	cd $(ROOT) && $(BIN)/python bench/run.py
	@# The space the compaction snapshots cost (the true delay), as the jobs run it: the system python.
	cd $(ROOT) && /usr/bin/python3 bench/compaction_space.py --days 15 --compact-every-days 7

clean:
	@$(TESTBED) clean || true

distclean: clean
	rm -rf $(BUILD) $(VENV)
