#[test]
fn probe_lock() {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap())
        .args(["build", "--workspace", "--bins", "--tests", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
}
