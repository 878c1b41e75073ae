# Thin driver: CMake does the work; Makefile.inc holds the site settings.
include Makefile.inc

CMAKE_FLAGS := -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLLMSERVE_CUDA=$(CUDA) \
	-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH) -DCUDAToolkit_ROOT=$(CUDA_HOME) -DLLMSERVE_UNITY_BUILD=$(UNITY)
ifneq ($(strip $(MPI_CXX)),)
CMAKE_FLAGS += -DMPI_CXX_COMPILER=$(MPI_CXX)
endif
ifneq ($(strip $(NCCL_ROOT)),)
CMAKE_FLAGS += -DNCCL_ROOT=$(NCCL_ROOT)
endif
ifneq ($(strip $(HDF5_ROOT)),)
CMAKE_FLAGS += -DHDF5_ROOT=$(HDF5_ROOT)
endif

.PHONY: all configure build test deps run demo clean

all: build

deps:
	bash scripts/install-deps.sh

configure:
	cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# The README's two commands. Both install the dependencies first (idempotent, quick when present).
# `make test` is also what .ci/run calls.
test: deps
	$(MAKE) build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

run: deps
	$(MAKE) build
	bash scripts/serve.sh

# Answers the demo chat prompts offline (no server).
demo: deps
	$(MAKE) build
	bash scripts/run-demo.sh

clean:
	rm -rf $(BUILD_DIR)
