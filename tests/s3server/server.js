// s3rver on 127.0.0.1, on the port given (0: any free port), keeping its objects in the folder given.
// It checks every request's SigV4 signature against its one key pair (S3RVER / S3RVER) and refuses
// a presigned URL past its X-Amz-Expires with 403 AccessDenied "Request has expired"
// (lib/signature/v4.js). Prints "listening on http://127.0.0.1:PORT" once it serves.
'use strict';

const S3rver = require('@20minutes/s3rver');

const [directory, port = '0'] = process.argv.slice(2);
if (!directory) {
  console.error('usage: node server.js DIRECTORY [PORT]');
  process.exit(2);
}

new S3rver({ address: '127.0.0.1', port: Number(port), directory, silent: true, vhostBuckets: false })
  .run()
  .then(({ address, port: bound }) => console.log(`listening on http://${address}:${bound}`))
  .catch((err) => {
    console.error(err);
    process.exit(1);
  });
