//! Writes randomly initialised backbone weights with the registry's key names, to try the
//! whole pipeline offline (`--weights`) or to serve from a test Hub.
//!
//! ```sh
//! cargo run --example random_weights -- resnet18 /tmp/resnet18-random.safetensors
//! lastlayer train --model resnet18 --weights /tmp/resnet18-random.safetensors ...
//! ```

use lastlayer::backbone::Backbone;
use lastlayer::hub::Registry;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, out] = args.as_slice() else {
        anyhow::bail!("usage: random_weights MODEL OUT.safetensors");
    };
    let entry = Registry::builtin().get(model)?.clone();
    tch::manual_seed(0);
    Backbone::random(entry.architecture, tch::Device::Cpu).save(std::path::Path::new(out))?;
    println!("wrote random {} weights to {out}", entry.name);
    Ok(())
}
