# The two commands of the README. Both install what they need first (infra/setup.sh).
.PHONY: run test setup lint

setup:
	@bash infra/setup.sh

run: setup
	.venv/bin/factory run --clock event --seeds 0,1,2

# The linters first: a lint or type error fails the run before the (long) test suite.
test: lint
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check streams models infra tests bench
	.venv/bin/python -m mypy streams models infra
