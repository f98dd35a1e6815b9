//! [`Collective`] over NCCL (cudarc's `nccl` module): one GPU per process, the processes
//! found by another collective (MPI's, or [`crate::SingleProcess`] for one GPU) that carries
//! NCCL's 128-byte unique id from rank 0 to every rank.
//!
//! The ordered sum keeps its order on GPUs: `chain_f32` receives the running sum from the
//! rank before (`ncclRecv`), adds this rank's groups, sends it on (`ncclSend`), and the last
//! rank broadcasts the total (`ncclBroadcast`). NCCL's own reductions (`ncclAllReduce`) are
//! not used: their order depends on the number of GPUs and the topology, so their bits do.
//! The seam's values live on the host, so each hop copies through host memory; a CUDA
//! training path whose partials stay on the GPU would hand device buffers instead (see
//! ARCHITECTURE.md, "GPUs").

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType};

use crate::{Collective, CollectiveError, Result};

/// A communicator over one GPU per process, and the collective that started them.
pub struct NcclWorld {
    comm: Mutex<Comm>,
    stream: Arc<CudaStream>,
    bootstrap: Arc<dyn Collective>,
    description: String,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; every use
// goes through `comm`'s lock, and the CUDA stream is cudarc's thread-safe handle.
unsafe impl Send for NcclWorld {}
unsafe impl Sync for NcclWorld {}

fn device_error(what: &str, e: impl std::fmt::Debug) -> CollectiveError {
    CollectiveError::Setup(format!("NCCL/CUDA: {what}: {e:?}"))
}

impl NcclWorld {
    /// Joins the processes of `bootstrap` in one NCCL communicator, this process on GPU
    /// `ordinal`: rank 0 makes the unique id and `bootstrap` gives it to every rank.
    pub fn start(bootstrap: Arc<dyn Collective>, ordinal: usize) -> Result<NcclWorld> {
        let context = CudaContext::new(ordinal).map_err(|e| device_error("the GPU", e))?;
        let stream = context.default_stream();
        let mine: Vec<u8> = match bootstrap.rank() {
            0 => Id::new()
                .map_err(|e| device_error("ncclGetUniqueId", e))?
                .internal()
                .iter()
                .map(|&c| c as u8)
                .collect(),
            _ => Vec::new(),
        };
        let ids = bootstrap.all_gather_bytes(&mine)?;
        let lead: [std::ffi::c_char; 128] = ids[0]
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|v: Vec<_>| CollectiveError::Mismatch {
                rank: 0,
                got: v.len(),
                expected: 128,
                what: "an NCCL unique id",
            })?;
        let comm = Comm::from_rank(
            stream.clone(),
            bootstrap.rank(),
            bootstrap.size(),
            Id::uninit(lead),
        )
        .map_err(|e| device_error("ncclCommInitRank", e))?;
        let version = cudarc::nccl::result::get_nccl_version()
            .map(|v| format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
            .unwrap_or_else(|_| "?".into());
        let description = format!("NCCL {version}, started by {}", bootstrap.describe());
        Ok(NcclWorld {
            comm: Mutex::new(comm),
            stream,
            bootstrap,
            description,
        })
    }

    fn to_device<T: DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(values)
            .map_err(|e| device_error("copy to the GPU", e))
    }

    fn to_host<T: DeviceRepr>(&self, values: &CudaSlice<T>) -> Result<Vec<T>> {
        let host = self
            .stream
            .clone_dtoh(values)
            .map_err(|e| device_error("copy from the GPU", e))?;
        self.stream
            .synchronize()
            .map_err(|e| device_error("synchronize", e))?;
        Ok(host)
    }

    /// Every process' `local`, of any lengths: the lengths first, then the values padded to
    /// the longest, with one `ncclAllGather` each.
    fn gather<T>(&self, local: &[T]) -> Result<Vec<Vec<T>>>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits + Copy + Default,
    {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let lengths = self.all_gather_on(&comm, &[local.len() as u64])?;
        // NCCL gathers equal counts: every process sends the longest (at least one value).
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = local.to_vec();
        padded.resize(longest, T::default());
        let all = self.all_gather_on(&comm, &padded)?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(rank, &n)| {
                let at = rank * longest;
                all[at..at + n as usize].to_vec()
            })
            .collect())
    }

    /// Every process' `mine` (all of one length), in rank order, by one `ncclAllGather`.
    fn all_gather_on<T>(&self, comm: &Comm, mine: &[T]) -> Result<Vec<T>>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits,
    {
        let mut all = self
            .stream
            .alloc_zeros(mine.len() * self.size())
            .map_err(|e| device_error("allocate", e))?;
        comm.all_gather(&self.to_device(mine)?, &mut all)
            .map_err(|e| device_error("ncclAllGather", e))?;
        self.to_host(&all)
    }

    /// The running sum from the rank before, this rank's contributions, on to the next; the
    /// last rank's total broadcast to all.
    fn chain<T>(&self, len: usize, add_mine: &mut dyn FnMut(&mut [T])) -> Result<Vec<T>>
    where
        T: NcclType + DeviceRepr + ValidAsZeroBits + Copy + Default,
    {
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let (rank, size) = (self.rank(), self.size());
        let mut running = vec![T::default(); len];
        if rank > 0 {
            let mut incoming = self
                .stream
                .alloc_zeros::<T>(len)
                .map_err(|e| device_error("allocate", e))?;
            comm.recv(&mut incoming, rank as i32 - 1)
                .map_err(|e| device_error("ncclRecv", e))?;
            running = self.to_host(&incoming)?;
        }
        add_mine(&mut running);
        let mut total = self.to_device(&running)?;
        if rank + 1 < size {
            comm.send(&total, rank as i32 + 1)
                .map_err(|e| device_error("ncclSend", e))?;
        }
        comm.broadcast_in_place(&mut total, size as i32 - 1)
            .map_err(|e| device_error("ncclBroadcast", e))?;
        self.to_host(&total)
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.bootstrap.rank()
    }

    fn size(&self) -> usize {
        self.bootstrap.size()
    }

    crate::by_typed_methods!();

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn abort(&self, code: i32) -> ! {
        // The processes are the bootstrap's (MPI_Abort ends them all).
        self.bootstrap.abort(code)
    }
}
