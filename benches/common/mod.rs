//! What the benches share: a synthetic fleet file and the process's peak memory.

/// A fleet of `flavors` flavors built in `build_regions` regions, each copied to `targets` of the others.
pub fn synthetic_fleet(flavors: usize, build_regions: usize, targets: usize) -> String {
    let mut text = String::from(
        "[fleet]\nname = \"bench\"\nami_name = \"{flavor}-{build_region}-{timestamp}\"\n\n\
         [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ubuntu\"\ntags = { ManagedBy = \"fleetbake\" }\n\n",
    );
    for flavor in 0..flavors {
        text.push_str(&format!(
            "[[flavor]]\nname = \"flavor-{flavor}\"\n\
             source_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\
             provisioners = [{{ type = \"shell\", inline = [\"echo {flavor}\"] }}]\n\n"
        ));
    }
    text.push_str("[regions]\n");
    let region = |index: usize| format!("zz-bench-{index}");
    for build in 0..build_regions {
        let copies: Vec<String> =
            (1..=targets).map(|offset| format!("\"{}\"", region(build_regions + build * targets + offset))).collect();
        text.push_str(&format!("{} = [{}]\n", region(build), copies.join(", ")));
    }
    text
}

/// The process's peak resident memory, in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Starts the peak-memory count afresh (Linux: write 5 to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
