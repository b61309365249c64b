# make demo : set up, fetch MiniLM and the polarity data, fine-tune, evaluate, predict
# make demo-tag : the same for token tagging: part-of-speech tags of the OANC sample
# make test : set up (with the test extras) and run the test suite
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

$(VENV)/.test: $(VENV)/.run
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(MINILM)/model.safetensors: | $(VENV)/.run
	$(BIN)/minift fetch weights minilm

data/polarity/train.csv: | $(VENV)/.run
	$(BIN)/minift fetch data polarity

data/pos/train.txt: | $(VENV)/.run
	$(BIN)/minift fetch data pos

.PHONY: demo demo-tag test bench
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

test: $(VENV)/.test $(MINILM)/model.safetensors data/polarity/train.csv
	$(BIN)/pytest -q

bench: $(VENV)/.test $(MINILM)/model.safetensors data/polarity/train.csv
	$(BIN)/python bench/bench.py
