# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# Development defaults for `make run`: Firebase Auth emulator convention
# (unsigned tokens, no Firebase project), in-process broker, a publish key.
DEV_ENV := FIREBASE_AUTH_EMULATOR_HOST=$${FIREBASE_AUTH_EMULATOR_HOST:-127.0.0.1:9099} \
	EVENTS_API_KEY=$${EVENTS_API_KEY:-dev-events-key} \
	VAPI_WEBHOOK_SECRET=$${VAPI_WEBHOOK_SECRET:-dev-vapi-secret} \
	TWILIO_AUTH_TOKEN=$${TWILIO_AUTH_TOKEN:-dev-twilio-token}

.PHONY: install run test lint bench clean

# `make run` installs only what running needs; `make test` adds the test tools.
$(BIN)/.installed-run: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(BIN)/.installed-run

# The official socket.io-client, pinned by package-lock.json: served to browsers
# by the app (/static/vendor/socket.io.min.js) and driven from Node by the tests.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(BIN)/.installed node_modules/.installed

run: $(BIN)/.installed-run node_modules/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(DEV_ENV) sh -c "exec $$(sed -n 's/^web: //p' Procfile)"

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench.run --connections 10000

clean:
	rm -rf $(VENV) node_modules test-artifacts .pytest_cache
