//! `tritium export` and `tritium inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tritium_checkpoint::adapter::AdapterInfo;
use tritium_checkpoint::{AdapterSet, Checkpoint};
use tritium_export::{
    BaseScales, EmbdType, ExportOptions, ScaleMode, WeightType, export as run_export,
};
use tritium_gguf::names::arch;
use tritium_gguf::{Gguf, Value};
use tritium_model::Backend;

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint directory (runs/NAME/checkpoints/step-N) or a run directory (its latest checkpoint).
    #[arg(long, required_unless_present = "lora")]
    checkpoint: Option<PathBuf>,
    /// Instead of a model: convert a fine-tuning adapter (adapter.safetensors, or a PEFT LoRA
    /// directory) into a llama.cpp LoRA-adapter GGUF, for `tritium run --lora` or llama.cpp's
    /// `--lora` (or, with --format safetensors, into a PEFT directory).
    #[arg(long, value_name = "ADAPTER", conflicts_with = "checkpoint")]
    lora: Option<PathBuf>,
    /// With --lora: the base GGUF the adapter will run on (its `.scale` tensors decide the
    /// adapter's form). Default: the base checkpoint recorded in adapter.json, exported as
    /// --type and --scale say (exact scales unless --scale folded or --type i2_s).
    #[arg(long, value_name = "BASE.gguf", requires = "lora")]
    base: Option<PathBuf>,
    /// Ternary weight type: tq2_0 (2.06 bpw, llama.cpp), tq1_0 (1.69 bpw, llama.cpp), i2_s (bitnet.cpp).
    #[arg(long = "type", default_value = "tq2_0")]
    ty: WeightType,
    /// exact: trits with d = 1 plus F32 `.scale` tensors; folded: fp16 scale in every block.
    #[arg(long, default_value = "exact")]
    scale: ScaleMode,
    /// Token embedding type: f16, f32 or q8_0.
    #[arg(long, default_value = "f16")]
    embd: EmbdType,
    /// Where the checkpoint's model runs: flex (default), wgpu[:N] or cuda[:N] (with their cargo feature).
    #[arg(long, default_value_t = Backend::Flex)]
    device: Backend,
    /// gguf (a file), or safetensors: a Hugging Face `BitNetForCausalLM` directory (bf16 master
    /// weights, online quantization) for a checkpoint, a PEFT LoRA directory for --lora.
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "safetensors"])]
    format: String,
    /// The GGUF file, or with --format safetensors the directory to create.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    file: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    if a.format == "safetensors" {
        return export_hf(&a);
    }
    if let Some(adapter) = &a.lora {
        let mut inputs = vec![adapter.clone(), adapter.with_file_name("adapter.json")];
        inputs.extend(a.base.clone());
        tritium_checkpoint::fsutil::check_output(&a.out, &inputs).map_err(anyhow::Error::msg)?;
        let set = read_adapter(adapter)?;
        let scales = match &a.base {
            Some(gguf) => BaseScales::from_gguf(gguf)?,
            // Without the file, --scale and --type say which export of the base it will run on.
            None if a.scale == ScaleMode::Folded || a.ty == WeightType::I2S => BaseScales::folded(),
            None => {
                let info = adapter.with_file_name("adapter.json");
                let text = std::fs::read_to_string(&info).with_context(|| {
                    format!(
                        "{}: needed to find the adapter's base checkpoint; or pass --base BASE.gguf",
                        info.display()
                    )
                })?;
                let info: AdapterInfo = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not an adapter.json", info.display()))?;
                let base = Checkpoint::open(&info.base)?;
                BaseScales::exact(&base.load_model(&a.device.device()?)?)
            }
        };
        let n = tritium_export::export_lora(&set, &scales, &a.out)
            .with_context(|| format!("exporting {}", adapter.display()))?;
        println!(
            "wrote {} from {}: {n} adapted projections, rank {}, alpha {}{}",
            a.out.display(),
            adapter.display(),
            set.adapters[0].rank,
            set.adapters[0].alpha,
            if set.base_hash.is_some() {
                ", tied to its base's hash"
            } else {
                " (no base hash recorded: the engine checks shapes only)"
            }
        );
        return Ok(());
    }
    let checkpoint = a.checkpoint.clone().expect("required by clap");
    let r = run_export(
        &checkpoint,
        &ExportOptions {
            weights: a.ty,
            scale: a.scale,
            embd: a.embd,
            device: a.device,
        },
        &a.out,
    )
    .with_context(|| format!("exporting {}", checkpoint.display()))?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} from {}: {:.2} MB, ternary tensors {:.4} bits/weight, whole file {:.3} bits/parameter, in {:.2} s",
        a.out.display(),
        r.checkpoint.display(),
        r.file_bytes as f64 / 1e6,
        r.ternary_bpw(),
        r.file_bpw(),
        r.seconds
    );
    Ok(())
}

/// A fine-tuning adapter (adapter.safetensors) or a PEFT LoRA directory.
fn read_adapter(path: &std::path::Path) -> Result<AdapterSet> {
    Ok(if path.is_dir() {
        tritium_checkpoint::hf::read_peft(path)?
    } else {
        AdapterSet::read(path)?
    })
}

/// `--format safetensors`: back to transformers (a model) or PEFT (an adapter).
fn export_hf(a: &ExportArgs) -> Result<()> {
    if let Some(adapter) = &a.lora {
        let inputs = [adapter.clone(), adapter.with_file_name("adapter.json")];
        tritium_checkpoint::fsutil::check_output(&a.out, &inputs).map_err(anyhow::Error::msg)?;
        let set = read_adapter(adapter)?;
        // PEFT records the base by name; the checkpoint the adapter was trained on is the best one.
        let base = std::fs::read_to_string(adapter.with_file_name("adapter.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<AdapterInfo>(&t).ok())
            .map(|i| i.base.display().to_string())
            .unwrap_or_default();
        let n = tritium_export::hf::export_peft(&set, &base, &a.out)
            .with_context(|| format!("exporting {}", adapter.display()))?;
        println!(
            "wrote {} (PEFT LoRA: adapter_model.safetensors, adapter_config.json) from {}: {n} adapted projections, rank {}, alpha {}",
            a.out.display(),
            adapter.display(),
            set.adapters[0].rank,
            set.adapters[0].alpha
        );
        return Ok(());
    }
    let checkpoint = a.checkpoint.clone().expect("required by clap");
    let r = tritium_export::hf::export_hf(&checkpoint, &a.out, a.device)
        .with_context(|| format!("exporting {}", checkpoint.display()))?;
    println!(
        "wrote {} (Hugging Face BitNetForCausalLM, bf16 master weights, online quantization): {} tensors, {:.2} MB",
        r.dir.display(),
        r.tensors,
        r.bytes as f64 / 1e6
    );
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let map = tritium_engine::map_file(&a.file)?;
    let g = Gguf::parse(&map).with_context(|| a.file.display().to_string())?;
    if a.json {
        let meta: serde_json::Map<String, serde_json::Value> = g
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.display())))
            .collect();
        let tensors: Vec<serde_json::Value> = g
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.ty.name(), "shape": t.dims, "bytes": t.nbytes, "offset": t.offset,
                "bits_per_weight": t.nbytes as f64 * 8.0 / t.n_elements() as f64}))
            .collect();
        return print_all(&format!(
            "{:#}\n",
            serde_json::json!({"version": g.version, "alignment": g.alignment, "metadata": meta, "tensors": tensors})
        ));
    }
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} metadata entries, {} tensors, alignment {}",
        a.file.display(),
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        g.alignment
    );
    for (k, v) in &g.metadata {
        let _ = writeln!(s, "  {k:<45} {}", v.display());
    }
    if g.get(arch::FFN_ACT).and_then(Value::as_str) == Some("relu2") {
        let _ = writeln!(
            s,
            "  note: {} = \"relu2\" is tritium's key; upstream llama.cpp runs SiLU for the bitnet architecture and computes wrong logits for this file (tritium run and bitnet.cpp's bitnet-b1.58 architecture run ReLU²)",
            arch::FFN_ACT
        );
    }
    let _ = writeln!(
        s,
        "  {:<34} {:>6} {:>16} {:>12} {:>8}",
        "tensor", "type", "shape", "bytes", "bpw"
    );
    for t in &g.tensors {
        let shape = t
            .dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        let _ = writeln!(
            s,
            "  {:<34} {:>6} {:>16} {:>12} {:>8.4}",
            t.name,
            t.ty.name(),
            shape,
            t.nbytes,
            t.nbytes as f64 * 8.0 / t.n_elements() as f64
        );
    }
    print_all(&s)
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly instead of panicking like `print!`.
fn print_all(s: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
