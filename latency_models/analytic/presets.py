"""Device presets for the analytic models, each number traced to a public document or marked as an assumption.

The phones (`mobile-cpu:<soc>`) are in `phones.py`; the FPGA boards (`fpga:<board>`) here."""

from __future__ import annotations

from latency_models.analytic.fpga import FpgaParams
from latency_models.analytic.mobile_cpu import MobileCpuParams
from latency_models.analytic.phones import PHONES, SNAPDRAGON_8_GEN_2

__all__ = ["PRESETS", "SNAPDRAGON_8_GEN_2", "ZCU102"]

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
        "Design - W4A8 (+w4a8): two 4-bit weights times one shared 8-bit activation in one DSP48E2 (27 x 18-bit "
        "multiplier, the weights 23 bits apart), again 2 MACs per DSP; four 4-bit MACs per DSP need 4-bit "
        "activations too (Xilinx WP521, Convolutional Neural Network with INT4 Optimization; Sommer et al., "
        "DSP-Packing, arXiv:2203.11028). So W4A8 halves the weights' bytes, not the array's cycles.",
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

PRESETS: dict[str, MobileCpuParams | FpgaParams] = {preset.name: preset for preset in (*PHONES, ZCU102)}
"""Every preset by name; a phone preset is at its default core configuration (`MobileCpuParams.on_cores`)."""
