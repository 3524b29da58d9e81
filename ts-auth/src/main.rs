fn main() {
    eprintln!("ts-auth: not built yet");
    std::process::exit(1);
}
