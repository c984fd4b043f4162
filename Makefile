# Natra's build: the BPF objects are compiled once here, never on a node.
# setup.py's build hook runs `make bpf accel` with OUT and FAST_SO pointing into
# the build directory, so `pip install .` and wheels carry both.
CLANG ?= clang
ARCH_INCLUDE := /usr/include/$(shell uname -m)-linux-gnu
BPF_CFLAGS := -O2 -g -target bpf -mcpu=v3 -Wall -Werror -I bpf -I $(ARCH_INCLUDE)
OUT ?= natra/bpf
FAST_SO ?= reference/_natra_fast.so
OBJECTS := $(OUT)/natra.bpf.o $(OUT)/natra_trace.bpf.o $(OUT)/natra_parse.bpf.o $(OUT)/natra_compat.bpf.o \
	$(OUT)/natra_shared.bpf.o $(OUT)/natra_shared_compat.bpf.o

.PHONY: all bpf accel clean check-clang test lint

all: bpf accel

accel: $(FAST_SO)

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

# Kernels before 6.15 lack bpf_res_spin_lock: the loader falls back to this one.
$(OUT)/natra_compat.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_COMPAT_LOCK -c $< -o $@

# The shared interim copy (one per node, a Pod's maps found by its host veth's
# ifindex), with each lock.
$(OUT)/natra_shared.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_SHARED -c $< -o $@

$(OUT)/natra_shared_compat.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_SHARED -DNATRA_COMPAT_LOCK -c $< -o $@

$(OUT)/natra_parse.bpf.o: bpf/natra.bpf.c bpf/natra.h
	@mkdir -p $(OUT)
	$(CLANG) $(BPF_CFLAGS) -DNATRA_PARSE_ONLY -c $< -o $@

lint:
	ruff check .

clean:
	rm -f $(OBJECTS) $(FAST_SO)

# The reference model's optional C accelerator (loaded with ctypes; the model
# falls back to pure Python without it). Needs only gcc, no BPF tool chain.
$(FAST_SO): reference/_fast.c bpf/natra.h
	@mkdir -p $(dir $@)
	$(CC) -O2 -shared -fPIC -Wall -Werror -I bpf -o $@ $<

# Natra's node bundle (dist/natra/natra, PyInstaller onedir with libbpf.so.1 and
# the BPF objects inside), built on this machine's glibc; deploy/Containerfile
# builds the one nodes run, on glibc 2.31.
.PHONY: node-bundle
node-bundle: bpf
	bash packaging/build_bundle.sh

# The node image from deploy/Containerfile (podman, buildah or docker). image-local
# builds it from Debian bases made here with debootstrap, for builders without a
# registry (CI); packaging/build_image.sh says more.
.PHONY: image image-local
image:
	bash packaging/build_image.sh

image-local:
	bash packaging/build_image.sh --local-bases

# Removes what image-local keeps in buildah's storage (about 1.8 GB: the image,
# its build stages' layers, the two Debian bases).
.PHONY: image-clean
image-clean:
	-buildah rmi -f natra:$$(sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml) \
	  localhost/natra-base:bookworm localhost/natra-base:bullseye
	-buildah rmi --prune

# Benchmarks (issue 8): every scenario through the real CNI chain, ~30 min,
# writes docs/benchmarks.md and docs/img/bench-*.png. bench-smoke only checks
# that the scripts still run (about a minute, output under /tmp).
.PHONY: bench bench-smoke
bench: bpf
	python3 -m bench.run_all

bench-smoke: bpf
	python3 -m bench.run_all --smoke --out /tmp/natra-bench-smoke/benchmarks.md \
	  --img-dir /tmp/natra-bench-smoke/img --json /tmp/natra-bench-smoke/record.json
