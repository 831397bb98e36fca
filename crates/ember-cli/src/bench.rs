//! `ember bench`: prints the engine's timings as a table or one JSON object.

use crate::args::BenchArgs;
use ember::bench::{run as run_bench, run_sd2_turbo, run_sdxl, BenchOptions, BenchSetup};
use ember::device::{parse_device, resolve_dtype};

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let options = BenchOptions {
        dtype: resolve_dtype(&args.dtype, &device)?,
        device,
        repeat: args.repeat,
    };
    match args.family.as_str() {
        "sd1" | "sd15" => {}
        "sdxl" => return run_sdxl_bench(args, &options),
        "sd2" => return run_turbo_bench(args, &options),
        other => anyhow::bail!("unknown --family {other:?}; ember bench times sd1, sd2 or sdxl networks"),
    }
    let report = run_bench(&options, &mut |stage| eprintln!("bench: {stage}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "Ember bench — SD1.5-size networks, random weights, {}{} on {}, {} threads",
        report.setup.dtype,
        if report.setup.bf16_tiles {
            " (AMX tiles, f32 activations)"
        } else {
            ""
        },
        report.setup.device,
        report.setup.threads
    );
    println!("{:<34} {:>10}", "measurement", "seconds");
    for (name, secs) in [
        ("UNet step 512×512 (CFG batch 2)", report.unet_step_512_s),
        ("UNet step 384×384 (CFG batch 2)", report.unet_step_384_s),
        ("UNet step 512×512, inpainting UNet", report.inpaint_unet_step_512_s),
        ("VAE decode 512×512", report.vae_decode_512_s),
        ("TAESD decode 512×512 (vae-approx)", report.taesd_decode_512_s),
        ("VAE encode 512×512", report.vae_encode_512_s),
        ("CLIP text encoder (batch 2)", report.clip_s),
    ] {
        println!("{name:<34} {secs:>10.3}");
    }
    println!(
        "{:<34} {:>10.2} GiB",
        "peak RSS",
        report.peak_rss_bytes as f64 / (1u64 << 30) as f64
    );
    let peak = |p: Option<f64>| p.map_or("n/a".to_string(), |g| format!("{g:.0}"));
    println!(
        "\nmeasured peak of this CPU, all threads: f32 FMA {} GFLOP/s, bf16 vdpbf16ps {} GFLOP/s, AMX bf16 tiles {} GFLOP/s",
        peak(report.peak_f32_gflops),
        peak(report.peak_bf16_gflops),
        peak(report.peak_amx_gflops)
    );
    for (title, rows) in [
        ("UNet step 512×512", &report.unet_step_512_ops),
        ("VAE decode 512×512", &report.vae_decode_512_ops),
    ] {
        if rows.is_empty() {
            continue;
        }
        println!("\n{title:<20} {:>9} {:>9} {:>9}", "seconds", "GFLOP", "GFLOP/s");
        for row in rows {
            println!(
                "  {:<18} {:>9.3} {:>9.1} {:>9.1}",
                row.class, row.seconds, row.gflop, row.gflops_per_s
            );
        }
    }
    Ok(())
}

/// `ember bench --family sdxl`.
fn run_sdxl_bench(args: &BenchArgs, options: &BenchOptions) -> anyhow::Result<()> {
    let report = run_sdxl(options, &mut |stage| eprintln!("bench: {stage}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let rows = [
        ("SDXL UNet step 1024×1024 (CFG batch 2)", report.sdxl_unet_step_1024_s),
        ("SDXL VAE decode 1024×1024", report.sdxl_vae_decode_1024_s),
        ("SDXL text encoders (batch 2)", report.sdxl_text_s),
    ];
    print_table("SDXL-size networks", &report.setup, &rows, report.peak_rss_bytes);
    Ok(())
}

/// `ember bench --family sd2`: SD 2.1-size networks as SD-Turbo runs them.
fn run_turbo_bench(args: &BenchArgs, options: &BenchOptions) -> anyhow::Result<()> {
    let report = run_sd2_turbo(options, &mut |stage| eprintln!("bench: {stage}"))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let rows = [
        (
            "UNet step 512×512, no guidance (batch 1)",
            report.sd2_unet_step_512_nocfg_s,
        ),
        ("VAE decode 512×512", report.sd2_vae_decode_512_s),
        ("text encoder (one prompt)", report.sd2_text_s),
        ("one-step txt2img 512×512 (warm)", report.turbo_txt2img_512_1step_s),
    ];
    print_table(
        "SD 2.1-size networks (SD-Turbo)",
        &report.setup,
        &rows,
        report.peak_rss_bytes,
    );
    Ok(())
}

/// A family benchmark's table: a title line, one row per measurement, the peak RSS.
fn print_table(what: &str, setup: &BenchSetup, rows: &[(&str, f64)], peak_rss_bytes: u64) {
    println!(
        "Ember bench — {what}, random weights, {} on {}, {} threads",
        setup.dtype, setup.device, setup.threads
    );
    println!("{:<44} {:>10}", "measurement", "seconds");
    for (name, secs) in rows {
        println!("{name:<44} {secs:>10.3}");
    }
    println!(
        "{:<44} {:>10.2} GiB",
        "peak RSS",
        peak_rss_bytes as f64 / (1u64 << 30) as f64
    );
}
