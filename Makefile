# Natra's build: the BPF objects are compiled once here, never on a node.
CLANG ?= clang
ARCH_INCLUDE := /usr/include/$(shell uname -m)-linux-gnu
BPF_CFLAGS := -O2 -g -target bpf -mcpu=v3 -Wall -Werror -I bpf -I $(ARCH_INCLUDE)
OUT := natra/bpf
OBJECTS := $(OUT)/natra.bpf.o $(OUT)/natra_trace.bpf.o $(OUT)/natra_parse.bpf.o

.PHONY: all bpf clean check-clang test lint

all: bpf

bpf: check-clang $(OBJECTS)

check-clang:
	@command -v $(CLANG) >/dev/null 2>&1 || { \
	  echo "natra: clang is needed to build the BPF program (apt-get install clang libbpf-dev); see README" >&2; exit 1; }

$(OUT)/natra.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(OUT)/natra_trace.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_TRACE -c $< -o $@

$(OUT)/natra_parse.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_PARSE_ONLY -c $< -o $@

lint:
	ruff check .

clean:
	rm -f $(OBJECTS)
