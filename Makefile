# make demo : set up, fetch MiniLM and the polarity data, fine-tune, evaluate, predict
# make demo-tag : the same for token tagging: part-of-speech tags of the OANC sample
# make demo-embed: sentence embeddings: MiniLM fine-tuned on inverse-cloze pairs of movie reviews, evaluated
#                  before and after, then a search of the held-out reviews
# make test : set up (with the test extras at the versions in tests/constraints.txt), run the test suite,
#             then build the wheel and run every task from it in a clean venv (.ci/wheel-smoke)
# make test-latest: the same suite against the newest releases of the test extras (in .venv-latest)
# make bench: the side-by-side benchmarks against transformers
PY ?= python3
# The CPU build of PyTorch; override for a GPU machine, e.g. make TORCH=torch demo
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
MINILM := weights/all-MiniLM-L6-v2
RUN := runs/polarity

$(VENV)/.run: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check '$(TORCH)'
	$(BIN)/pip install -q --disable-pip-version-check -e .
	touch $@

# The test extras at the versions CI was last green with: a new release cannot break a clean checkout.
# `make test-latest` tries the newest; when it passes, refresh the pins (see tests/constraints.txt).
$(VENV)/.test: $(VENV)/.run tests/constraints.txt
	$(BIN)/pip install -q --disable-pip-version-check -c tests/constraints.txt -e '.[test]'
	touch $@

.venv-latest/.test: pyproject.toml
	test -x .venv-latest/bin/python || $(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q --disable-pip-version-check '$(TORCH)'
	.venv-latest/bin/pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager -e '.[test]'
	touch $@

$(MINILM)/model.safetensors: | $(VENV)/.run
	$(BIN)/minift fetch weights minilm

data/polarity/train.csv: | $(VENV)/.run
	$(BIN)/minift fetch data polarity

data/pos/train.txt: | $(VENV)/.run
	$(BIN)/minift fetch data pos

data/reviews-ir/train.csv: | $(VENV)/.run
	$(BIN)/minift fetch data reviews-ir

.PHONY: demo demo-tag demo-embed test test-latest bench
demo: $(MINILM)/model.safetensors data/polarity/train.csv
	$(BIN)/minift train --model $(MINILM) --train data/polarity/train.csv --eval data/polarity/dev.csv \
		--out $(RUN) --overwrite
	$(BIN)/minift eval --model $(RUN) --data data/polarity/test.csv
	$(BIN)/minift predict --model $(RUN) "这是一个正面的句子。" "A gorgeous, witty, heartfelt film." \
		"The plot is a mess and the jokes fall flat." "It is a movie."

demo-tag: $(MINILM)/model.safetensors data/pos/train.txt
	$(BIN)/minift train --task tag --model $(MINILM) --train data/pos/train.txt --eval data/pos/dev.txt \
		--out runs/pos --overwrite --epochs 1 --lr 2e-4
	$(BIN)/minift eval --model runs/pos --data data/pos/test.txt
	$(BIN)/minift predict --model runs/pos "Barack Obama visited Paris ." "The old man the boats ." \
		"I saw her duck under the table ."

# A short run (the table in docs/embeddings.md comes from a whole epoch at --max-length 256).
demo-embed: $(MINILM)/model.safetensors data/reviews-ir/train.csv
	$(BIN)/minift eval --model $(MINILM) --data data/reviews-ir/test.csv --max-length 128
	$(BIN)/minift train --task embed --model $(MINILM) --train data/reviews-ir/train.csv \
		--eval data/reviews-ir/dev.csv --out runs/reviews-ir --overwrite --max-steps 12 --batch-size 32 \
		--max-length 128 --lr 2e-5
	$(BIN)/minift eval --model runs/reviews-ir --data data/reviews-ir/test.csv --max-length 128
	$(BIN)/minift search --model runs/reviews-ir --corpus data/reviews-ir/test.csv --text-column passage \
		--top-k 3 --max-length 128 "a dull and annoying comedy" "the special effects are stunning"

test: $(VENV)/.test $(MINILM)/model.safetensors data/polarity/train.csv
	$(BIN)/pytest -q
	.ci/wheel-smoke $(BIN)/python

test-latest: .venv-latest/.test $(MINILM)/model.safetensors data/polarity/train.csv
	.venv-latest/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|onnxruntime|hypothesis|numpy) '
	.venv-latest/bin/pytest -q

bench: $(VENV)/.test $(MINILM)/model.safetensors data/polarity/train.csv
	$(BIN)/python bench/bench.py
