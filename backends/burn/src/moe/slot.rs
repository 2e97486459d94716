//! [`RouterSlot`]: a [`MoeRouter`] as a field of a burn module. burn 0.21's `#[module(skip)]`
//! and `Ignored<_>` cannot hold it: the derive still calls `AutodiffModule::valid` on a skipped
//! field whose type names the backend, so the slot implements the module traits itself.

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::tensor::backend::AutodiffBackend;
use simbal_core::{Result, RouterConfig, SimbalError};

use crate::{MoeRouter, SimbalBackend};

/// A [`MoeRouter`] as a non-trainable field of a burn module: no parameters, nothing in the
/// record. `valid()` / `from_inner` and moves to another device give a fresh router (its own
/// statistics) on the new backend or device, built from the same configuration; a router that
/// could not be built keeps its error for the next forward.
#[derive(Clone)]
pub struct RouterSlot<B: SimbalBackend> {
    cfg: RouterConfig,
    device: B::Device,
    router: core::result::Result<MoeRouter<B>, SimbalError>,
}

// By hand: `MoeRouter<B>`'s derived `Debug` needs `B::Engine: Debug`, which not every engine is.
impl<B: SimbalBackend> core::fmt::Debug for RouterSlot<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RouterSlot")
            .field("cfg", &self.cfg)
            .field("device", &self.device)
            .field("ready", &self.router.is_ok())
            .finish()
    }
}

impl<B: SimbalBackend> RouterSlot<B> {
    /// A router of `cfg` for tensors on `device`.
    pub fn new(cfg: RouterConfig, device: &B::Device) -> Self {
        Self {
            cfg,
            device: device.clone(),
            router: MoeRouter::new(cfg, device),
        }
    }

    /// The router.
    ///
    /// # Errors
    /// The error that building it gave ([`MoeRouter::new`]).
    pub fn get(&self) -> Result<&MoeRouter<B>> {
        self.router.as_ref().map_err(Clone::clone)
    }

    fn moved(self, device: &B::Device) -> Self {
        if *device == self.device {
            self
        } else {
            Self::new(self.cfg, device)
        }
    }
}

impl<B: SimbalBackend> Module<B> for RouterSlot<B> {
    type Record = EmptyRecord;

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }

    fn to_device(self, device: &B::Device) -> Self {
        self.moved(device)
    }

    fn fork(self, device: &B::Device) -> Self {
        self.moved(device)
    }

    fn collect_devices(&self, mut devices: Devices<B>) -> Devices<B> {
        if !devices.contains(&self.device) {
            devices.push(self.device.clone());
        }
        devices
    }
}

impl<B> AutodiffModule<B> for RouterSlot<B>
where
    B: AutodiffBackend + SimbalBackend,
    B::InnerBackend: SimbalBackend,
{
    type InnerModule = RouterSlot<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        RouterSlot::new(self.cfg, &self.device)
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Self::new(module.cfg, &module.device)
    }
}

impl<B: SimbalBackend> ModuleDisplayDefault for RouterSlot<B> {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&format!(
                "MoeRouter {{ experts: {}, k: {} }}",
                self.cfg.experts, self.cfg.k
            ))
            .optional()
    }
}

impl<B: SimbalBackend> ModuleDisplay for RouterSlot<B> {}
