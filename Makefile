# The two commands of the README.
.PHONY: serve test

## Build, pull the default model (all-minilm-l6-v2) and serve it on port 8080.
serve:
	scripts/serve.sh

## Build, pull the test models and run every test.
test:
	scripts/test.sh
