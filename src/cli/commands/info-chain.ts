/** `info --backing-chain`: every image of the chain, top first (JSON: an array, as qemu-img). */
import { type CliContext, type OptionSpec, type ParsedArgs, flag, printJson, str, wantsJson } from '../command.js';
import { describeChain } from '../../maintenance/chain.js';

export const BACKING_CHAIN_OPTION: OptionSpec = {
  name: 'backing-chain',
  type: 'boolean',
  description: "describe the whole backing chain (followed only inside the image's directory, or --backing-dir)",
};

/** Describe the chain; `describeOne` prints one image's human report (info without --backing-chain). */
export async function infoChain(args: ParsedArgs, ctx: CliContext, describeOne: (args: ParsedArgs) => Promise<number>): Promise<number> {
  const path = args.positionals[0]!;
  const chain = await describeChain(path, { format: str(args, 'format'), backing: str(args, 'backing-dir') ?? true, dataFile: flag(args, 'data-file') });
  if (wantsJson(args)) {
    printJson(ctx, chain);
    return 0;
  }
  for (const [i, layer] of chain.entries()) {
    if (i > 0) ctx.stdout.write('\n');
    const values = { ...args.values, 'backing-chain': false, backing: false, 'backing-dir': undefined, format: layer.format };
    const code = await describeOne({ values, positionals: [layer.filename] });
    if (code !== 0) return code;
  }
  return 0;
}
