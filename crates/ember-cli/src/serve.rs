//! `ember serve`: the web UI and HTTP API (crate `ember-server`), with the same model flags as `ember generate`.

use crate::args::ServeArgs;

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    ember_server::serve_blocking(ember_server::Config {
        host: args.host.clone(),
        port: args.port,
        data_dir: args.data_dir.clone(),
        model: args.model.model.clone(),
        device: args.model.device.clone(),
        dtype: args.model.dtype.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        allowed_hosts: args.allowed_hosts.clone(),
        max_megapixels: args.max_pixels,
        work_budget: args.work_budget,
    })
}
