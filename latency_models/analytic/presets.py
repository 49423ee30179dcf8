"""Device presets for the analytic models, each number traced to a public document or marked as an assumption."""

from __future__ import annotations

from latency_models.analytic.fpga import FpgaParams
from latency_models.analytic.mobile_cpu import CoreGroup, MobileCpuParams

__all__ = ["PRESETS", "SNAPDRAGON_8_GEN_2", "ZCU102"]

SNAPDRAGON_8_GEN_2 = MobileCpuParams(
    name="mobile-cpu:snapdragon-8-gen-2",
    hardware=(
        "Qualcomm Snapdragon 8 Gen 2 (SM8550), fp32 on 4 threads: the Cortex-X3 prime core "
        "and 3 of the 4 Cortex-A715/A710 performance cores"
    ),
    cores=(
        CoreGroup(name="Cortex-X3", count=1, clock_ghz=3.2, fp32_flops_per_cycle=32.0),
        CoreGroup(name="Cortex-A715/A710", count=3, clock_ghz=2.8, fp32_flops_per_cycle=16.0),
    ),
    gemm_efficiency=0.6,
    attention_efficiency=0.35,
    elementwise_efficiency=0.25,
    scalar_ops_per_cycle=1.0,
    dram_bandwidth_gbs=67.2,
    bandwidth_efficiency=0.5,
    op_overhead_us=5.0,
    parallel_grain_mflop=1.0,
    layernorm_flops_per_element=8.0,
    gelu_flops_per_element=20.0,
    softmax_flops_per_element=20.0,
    sources=(
        "Spec - Qualcomm, Snapdragon 8 Gen 2 Mobile Platform product brief (qualcomm.com): Kryo CPU, "
        "1 prime core (Arm Cortex-X3) up to 3.2 GHz, 4 performance cores (2x Cortex-A715, 2x Cortex-A710) "
        "up to 2.8 GHz, 3 efficiency cores (Cortex-A510) up to 2.0 GHz; LPDDR5X up to 4200 MHz.",
        "Spec - Arm, Cortex-X3 Core Software Optimization Guide (developer.arm.com): four 128-bit FP/ASIMD pipelines "
        "that each issue a vector FMLA per cycle: 4 pipes x 4 fp32 lanes x 2 FLOP = 32 FLOP/cycle.",
        "Spec - Arm, Cortex-A715 and Cortex-A710 Core Software Optimization Guides (developer.arm.com): two 128-bit "
        "FP/ASIMD pipelines with FMLA: 2 x 4 x 2 = 16 FLOP/cycle; the two core types are counted as one group "
        "because their clock and FP width are the same.",
        "Spec-derived - DRAM peak: LPDDR5X at 4200 MHz is 8400 MT/s; x 64-bit bus (four 16-bit channels, the usual "
        "flagship configuration; the bus width is not in the product brief) = 67.2 GB/s.",
        "Assumption - threads: 4 threads on the prime core and three performance cores, a common setting for CPU "
        "inference on phones (TFLite benchmark_model --num_threads=4); the efficiency cores are left out because "
        "a thread on them would hold up every parallel op. Clocks are the maximum clocks (no thermal throttling).",
        "Assumption - gemm_efficiency 0.6: tuned NEON fp32 GEMM kernels (XNNPACK, Ruy) reach a majority of the "
        "FMA peak on large shapes; packing, edge tiles and the narrow D=192/384 layers of small ViTs cost the rest.",
        "Assumption - attention_efficiency 0.35: the per-head matmuls are small (K = head_dim = 64, or N) and "
        "batched over heads, so they reach a lower share of peak than the Linear layers.",
        "Assumption - elementwise_efficiency 0.25 with FLOP counts LayerNorm 8, GELU 20 (erf approximation), "
        "softmax 20 (exp polynomial, max, sum, divide) per element: these ops do not keep the FMA pipes busy.",
        "Assumption - scalar_ops_per_cycle 1: top-k and sort are branchy scalar code (one comparison per cycle).",
        "Assumption - bandwidth_efficiency 0.5: a phone CPU cluster sustains roughly half the DRAM peak.",
        "Assumption - op_overhead_us 5: operator dispatch plus waking and joining the thread pool in a mobile "
        "runtime, per op.",
        "Assumption - parallel_grain_mflop 1: below about 1 MFLOP (~10 us on one core) per thread, another thread "
        "costs more in wake-up and barrier than it saves.",
    ),
)

ZCU102 = FpgaParams(
    name="fpga:zcu102",
    hardware="AMD/Xilinx ZCU102 board, Zynq UltraScale+ XCZU9EG: int8 ViT accelerator with a 32 x 64 GEMM array",
    bits=8,
    clock_mhz=200.0,
    pe_rows=32,
    pe_cols=64,
    dsp_budget=2520,
    bram_bytes=912 * 36 * 1024 // 8,
    activation_buffer_bytes=2 * 1024 * 1024,
    ddr_bandwidth_gbs=19.2,
    ddr_efficiency=0.7,
    layernorm_lanes=16,
    softmax_lanes=32,
    gelu_lanes=32,
    vector_lanes=64,
    nonlinear_dsps_per_lane=3,
    nonlinear_latency_cycles=32,
    sorter_lanes=16,
    onchip_bytes_per_cycle=64,
    layer_overhead_cycles=300,
    sources=(
        "Spec - AMD, Zynq UltraScale+ MPSoC Data Sheet: Overview (DS891): XCZU9EG has 2,520 DSP48E2 slices and "
        "32.1 Mb of block RAM (912 blocks of 36 Kb = 4,202,496 bytes) and no UltraRAM.",
        "Spec - AMD, ZCU102 Evaluation Board User Guide (UG1182, "
        "https://www.xilinx.com/support/documentation/boards_and_kits/zcu102/ug1182-zcu102-eval-bd.pdf): "
        "XCZU9EG device, 64-bit DDR4 SODIMM on the processing system.",
        "Spec-derived - DDR peak: 64-bit x 2400 MT/s (DDR4-2400, the PS memory controller's top DDR4 rate in "
        "AMD DS925, Zynq UltraScale+ MPSoC Data Sheet: DC and AC Switching Characteristics) = 19.2 GB/s.",
        "Spec - Xilinx WP486, Deep Learning with INT8 Optimization on Xilinx Devices: a DSP48E2 computes two INT8 "
        "multiply-accumulates that share one operand per cycle (2 MACs per DSP at 8 bits, 1 at 16 bits).",
        "Design choices from published ZCU102 ViT accelerators - Dong et al., HeatViT: Hardware-Efficient Adaptive "
        "Token Pruning for Vision Transformers, HPCA 2023 (arXiv:2211.08110): 8-bit fixed point, polynomial "
        "approximations of the nonlinear functions, token selection on the device reusing the backbone hardware.",
        "Plausibility references on the same board - Li et al., Auto-ViT-Acc: An FPGA-Aware Automatic Acceleration "
        "Framework for Vision Transformer with Mixed-Scheme Quantization, FPL 2022 (arXiv:2208.05163), 56.8 FPS on "
        "DeiT-Base; Sun et al., VAQF: Fully Automatic Software-Hardware Co-Design Framework for Low-Bit Vision "
        "Transformer, 2022 (arXiv:2201.06618), 24 FPS on DeiT-Base with 8-bit activations.",
        "Clock - Shao et al., An FPGA-Based Reconfigurable Accelerator for Convolution-Transformer Hybrid "
        "EfficientViT, 2024 (arXiv:2403.20230): 200 MHz on ZCU102, up to 780.2 GOPS; this preset's peak is "
        "2048 MACs x 2 x 200 MHz = 819 GOPS.",
        "Assumption - GEMM array 32 x 64 (1,024 DSPs at 8 bits): about 40% of the DSPs, leaving room for the "
        "nonlinear and vector units and for timing closure at 200 MHz; 1,296 DSPs in all with the units below.",
        "Assumption - activation buffer 2 MiB, half the block RAM (the rest holds double-buffered weight tiles and "
        "FIFOs); ddr_efficiency 0.7 for burst DMA through the AXI HP ports.",
        "Assumption - nonlinear units: LayerNorm 16, softmax 32, GELU 32 lanes, 3 DSPs per lane (polynomial "
        "evaluation and scaling), 32 cycles of pipeline latency per pass; vector unit 64 lanes.",
        "Assumption - token selection: a merge-sort network of 16 comparators per cycle (LUTs), kept tokens moved "
        "over a 512-bit (64 bytes/cycle) on-chip datapath.",
        "Assumption - 300 control cycles (1.5 us) per op for instruction fetch, DMA descriptors and pipeline drain.",
    ),
)

PRESETS: dict[str, MobileCpuParams | FpgaParams] = {preset.name: preset for preset in (SNAPDRAGON_8_GEN_2, ZCU102)}
