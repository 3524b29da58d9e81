fn main() {
    eprintln!("ts-proxy-rules: not built yet");
    std::process::exit(1);
}
